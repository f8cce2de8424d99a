-- Orders: a local copy of the orderable catalog, orders with their lines, one
-- fulfilment per partner of an order, and metered usage.

-- Every published version of every offering, as the catalog's compacted topic
-- last described it.  Orders never ask the catalog: this table answers.
CREATE TABLE offering_versions (
    offering_id  text        NOT NULL,
    version      integer     NOT NULL,
    owner_id     text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('published', 'retired')),
    orderable    boolean     NOT NULL,
    currency     text        NOT NULL,
    components   jsonb       NOT NULL,
    changed_at   timestamptz NOT NULL,
    PRIMARY KEY (offering_id, version)
);

CREATE TABLE agreements (
    agreement_id text        PRIMARY KEY,
    grantor_id   text        NOT NULL,
    grantee_id   text        NOT NULL,
    status       text        NOT NULL CHECK (status IN ('active', 'revoked', 'expired')),
    expires_at   timestamptz
);

CREATE TABLE orders (
    id            text        PRIMARY KEY,
    customer_id   text        NOT NULL,
    status        text        NOT NULL
                  CHECK (status IN ('pending', 'confirmed', 'fulfilled', 'cancelled')),
    currency      text        NOT NULL,
    total         bigint      NOT NULL CHECK (total >= 0),
    placed_at     timestamptz NOT NULL,
    accept_by     timestamptz NOT NULL,
    changed_at    timestamptz NOT NULL,
    cancel_reason text        CHECK (cancel_reason IN ('rejected', 'deadline', 'customer')),
    -- The sequence number of the last event recorded about this order.
    sequence      integer     NOT NULL CHECK (sequence >= 1)
);
CREATE INDEX orders_by_customer ON orders (customer_id, id);

CREATE TABLE order_lines (
    id               text    PRIMARY KEY,
    order_id         text    NOT NULL REFERENCES orders (id),
    position         integer NOT NULL,
    offering_id      text    NOT NULL,
    offering_version integer NOT NULL,
    owner_id         text    NOT NULL,
    quantity         integer NOT NULL CHECK (quantity > 0),
    amount           bigint  NOT NULL CHECK (amount >= 0),
    components       jsonb   NOT NULL,
    UNIQUE (order_id, position)
);
-- The accountable partner lists the orders of the offerings it owns.
CREATE INDEX order_lines_by_owner ON order_lines (owner_id, order_id);

CREATE TABLE fulfillments (
    id          text        PRIMARY KEY,
    order_id    text        NOT NULL REFERENCES orders (id),
    partner_id  text        NOT NULL,
    role        text        NOT NULL,
    status      text        NOT NULL
                CHECK (status IN ('requested', 'accepted', 'completed', 'rejected', 'cancelled')),
    reason      text,
    changed_at  timestamptz NOT NULL,
    -- Each partner is asked exactly once per order, whatever the number of lines.
    UNIQUE (order_id, partner_id)
);
CREATE INDEX fulfillments_by_partner ON fulfillments (partner_id, id);

-- Usage ids are the reporting partner's own; each is counted once.
CREATE TABLE usage_records (
    reporter_id  text        NOT NULL,
    usage_id     text        NOT NULL,
    order_id     text        NOT NULL REFERENCES orders (id),
    charge_id    text        NOT NULL UNIQUE,
    amount       bigint      NOT NULL CHECK (amount >= 0),
    quantity     bigint      NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (reporter_id, usage_id)
);
CREATE INDEX usage_records_by_order ON usage_records (order_id);
