-- Durable timers: "run handler <kind> for <key> at <due_at>", scheduled inside
-- the transaction that decided it, fired by whichever replica claims it first.
-- One row per (kind, key): scheduling again moves the deadline.
CREATE TABLE timers (
    kind            text        NOT NULL,
    key             text        NOT NULL,
    due_at          timestamptz NOT NULL,
    -- due_at at first; pushed back after each failed attempt (backoff).
    next_attempt_at timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    -- Set once the attempts are used up: the loop leaves the row to an operator,
    -- who fixes the cause and sets parked_at (and attempts) back to NULL (0).
    parked_at       timestamptz,
    scheduled_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, key)
);
CREATE INDEX timers_due ON timers (next_attempt_at) WHERE parked_at IS NULL;
