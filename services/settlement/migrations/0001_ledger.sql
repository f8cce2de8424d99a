-- The settlement ledger: double entry, balanced and append-only, enforced here.
--
-- Signs: a posting's amount is positive for a debit and negative for a credit,
-- so every journal entry's postings sum to zero per currency.  What the
-- marketplace owes a partner (pending, available, in transit) is a credit
-- balance: the partner sees it with the sign turned.

CREATE TABLE journal_entries (
    -- Natural keys ("charge:<charge_id>", "refund:<refund_id>", "release:<order_id>",
    -- "payout:<payout_id>", "paid:<payout_id>"): the same money can never be
    -- booked twice, whatever a consumer or an operator retries.
    entry_id   text        PRIMARY KEY,
    kind       text        NOT NULL CHECK (kind IN ('charge', 'refund', 'release', 'payout', 'paid')),
    -- When the money moved in the business's terms (the event's time), so a
    -- replay of the same events books the same history.
    booked_at  timestamptz NOT NULL,
    order_id   text,
    charge_id  text,
    refund_id  text,
    payout_id  text,
    event_id   text,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE postings (
    -- Its journal entry must exist: checked per statement by the trigger below (a
    -- foreign key checks and locks row by row, and cost more than the rest of the insert).
    entry_id   text     NOT NULL,
    line       smallint NOT NULL,
    -- The account is (kind, partner_id, currency); the three house accounts have no partner.
    account    text     NOT NULL CHECK (account IN (
        'customer_receivables', 'fee_revenue', 'cash',
        'partner_pending', 'partner_available', 'payouts_in_transit')),
    partner_id text     CHECK ((partner_id IS NULL) = (account IN ('customer_receivables', 'fee_revenue', 'cash'))),
    currency   text     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount     bigint   NOT NULL CHECK (amount <> 0),
    -- Which part of a split (gross, fee, share, margin) or which move (release, payout, paid).
    part       text     NOT NULL,
    -- The order the money belongs to: payouts and bank matches are booked per
    -- order too, so the three-way check can follow an order's money to the bank.
    order_id   text,
    PRIMARY KEY (entry_id, line)
);
CREATE INDEX postings_partner ON postings (partner_id, currency, account) WHERE partner_id IS NOT NULL;
CREATE INDEX postings_order ON postings (order_id) WHERE order_id IS NOT NULL;

-- Balance: the postings one statement adds to an entry sum to zero per currency.
-- By induction every entry then always sums to zero, whatever statements
-- follow, and the check reads only the statement's own rows (the transition
-- table), never the ledger: its cost does not grow with the ledger.  A deferred
-- constraint trigger would have to be per row (one check per posting at
-- commit), which costs more than the insert itself at ledger rates; the price
-- here is that an entry's postings are written by one statement, which is how
-- the service writes them.  COPY is checked too.
CREATE FUNCTION ledger_refuse_unbalanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced record;
BEGIN
    SELECT entry_id, currency, sum(amount) AS total INTO unbalanced
      FROM new_postings
     GROUP BY entry_id, currency
    HAVING sum(amount) <> 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % does not balance: its % postings sum to %',
            unbalanced.entry_id, unbalanced.currency, unbalanced.total
            USING ERRCODE = 'check_violation';
    END IF;
    IF EXISTS (
        SELECT 1 FROM (SELECT DISTINCT entry_id FROM new_postings) touched
         WHERE NOT EXISTS (SELECT 1 FROM journal_entries e WHERE e.entry_id = touched.entry_id)
    ) THEN
        RAISE EXCEPTION 'postings name a journal entry that does not exist'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER postings_balance AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_unbalanced();

-- Immutable: corrections are new entries.  Statement-level BEFORE triggers refuse
-- even an UPDATE or DELETE that matches no row, and TRUNCATE.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is refused: the ledger is append-only; book a correcting entry',
        TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journal_entries_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON journal_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- What settlement knows of each order, from the orders topic.
CREATE TABLE settled_orders (
    order_id      text        PRIMARY KEY,
    customer_id   text        NOT NULL,
    currency      text        NOT NULL,
    status        text        NOT NULL,
    last_sequence integer     NOT NULL,
    placed_at     timestamptz NOT NULL,
    -- The total the order announced when placed, for the three-way check.
    placed_total  bigint      NOT NULL,
    fulfilled     boolean     NOT NULL DEFAULT false
);
CREATE INDEX settled_orders_placed_at ON settled_orders (placed_at, order_id);

-- The split audit: each charge with its inputs and parts, as computed then.
CREATE TABLE charges (
    charge_id       text        PRIMARY KEY,
    kind            text        NOT NULL,
    order_id        text        NOT NULL,
    line_id         text        NOT NULL,
    offering_id     text        NOT NULL,
    component_index integer     NOT NULL,
    owner_id        text        NOT NULL,
    partner_id      text        NOT NULL,
    role            text        NOT NULL,
    agreement_id    text,
    currency        text        NOT NULL,
    gross           bigint      NOT NULL CHECK (gross >= 0),
    fee_bps         integer     NOT NULL,
    fee             bigint      NOT NULL CHECK (fee >= 0),
    share_bps       integer     NOT NULL,
    share           bigint      NOT NULL CHECK (share >= 0),
    margin          bigint      NOT NULL CHECK (margin >= 0),
    rule            text        NOT NULL,
    charged_at      timestamptz NOT NULL,
    CHECK (fee + share + margin = gross)
);
CREATE INDEX charges_order ON charges (order_id);

CREATE TABLE refunds (
    refund_id   text        PRIMARY KEY,
    charge_id   text        NOT NULL REFERENCES charges,
    order_id    text        NOT NULL,
    currency    text        NOT NULL,
    amount      bigint      NOT NULL CHECK (amount >= 0),
    fee         bigint      NOT NULL CHECK (fee >= 0),
    share       bigint      NOT NULL CHECK (share >= 0),
    margin      bigint      NOT NULL CHECK (margin >= 0),
    rule        text        NOT NULL,
    refunded_at timestamptz NOT NULL,
    CHECK (fee + share + margin = amount)
);
CREATE INDEX refunds_order ON refunds (order_id);

CREATE TRIGGER charges_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON charges
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER refunds_immutable BEFORE UPDATE OR DELETE OR TRUNCATE ON refunds
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- An order's event that arrived before the one it follows: kept until the gap fills.
CREATE TABLE parked_order_events (
    order_id  text    NOT NULL,
    sequence  integer NOT NULL,
    envelope  bytea   NOT NULL,
    PRIMARY KEY (order_id, sequence)
);

CREATE TABLE payouts (
    payout_id  text        PRIMARY KEY,
    partner_id text        NOT NULL,
    currency   text        NOT NULL,
    amount     bigint      NOT NULL CHECK (amount > 0),
    reference  text        NOT NULL UNIQUE,
    as_of      timestamptz NOT NULL,
    status     text        NOT NULL CHECK (status IN ('pending', 'paid', 'failed')),
    created_at timestamptz NOT NULL DEFAULT now(),
    paid_at    timestamptz,
    -- One payout per partner and currency per run, even if two runs race.
    UNIQUE (partner_id, currency, as_of)
);
CREATE INDEX payouts_partner ON payouts (partner_id, payout_id);

CREATE TABLE reconciliations (
    reconciliation_id text        PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    report            jsonb       NOT NULL
);
