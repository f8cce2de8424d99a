-- Catalog: accounts, co-sell agreements and offerings with immutable versions.

CREATE TABLE partners (
    id               text        PRIMARY KEY,
    name             text        NOT NULL,
    kind             text        NOT NULL
                     CHECK (kind IN ('isv', 'managed_service', 'integrator', 'reseller')),
    -- Raised by every token rotation; tokens of an older generation are refused.
    token_generation integer     NOT NULL DEFAULT 1,
    registered_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE customers (
    id               text        PRIMARY KEY,
    name             text        NOT NULL,
    email            text        NOT NULL,
    email_key        text        NOT NULL UNIQUE,
    token_generation integer     NOT NULL DEFAULT 1,
    registered_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agreements (
    id          text        PRIMARY KEY,
    grantor_id  text        NOT NULL REFERENCES partners (id),
    grantee_id  text        NOT NULL REFERENCES partners (id),
    role        text        NOT NULL,
    share_bps   integer     NOT NULL CHECK (share_bps BETWEEN 0 AND 10000),
    status      text        NOT NULL CHECK (status IN ('active', 'revoked', 'expired')),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz,
    ended_at    timestamptz,
    CHECK (grantor_id <> grantee_id)
);
CREATE INDEX agreements_by_grantor ON agreements (grantor_id, id);
CREATE INDEX agreements_by_grantee ON agreements (grantee_id, id);
CREATE INDEX agreements_expiring ON agreements (expires_at)
    WHERE status = 'active' AND expires_at IS NOT NULL;

-- One row per offering holding its current version; published versions are
-- also kept, immutable, in offering_versions so orders can refer to them.
CREATE TABLE offerings (
    id                 text        PRIMARY KEY,
    owner_id           text        NOT NULL REFERENCES partners (id),
    status             text        NOT NULL CHECK (status IN ('draft', 'published', 'retired')),
    version            integer     NOT NULL,
    name               text        NOT NULL,
    description        text        NOT NULL,
    currency           text        NOT NULL,
    components         jsonb       NOT NULL,
    -- Denormalised from components for the browse filters.
    partner_ids        text[]      NOT NULL,
    partner_kinds      text[]      NOT NULL,
    agreement_ids      text[]      NOT NULL,
    orderable          boolean     NOT NULL DEFAULT false,
    unorderable_reason text,
    created_at         timestamptz NOT NULL,
    published_at       timestamptz,
    changed_at         timestamptz NOT NULL,
    search             tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english', name), 'A')
        || setweight(to_tsvector('english', description), 'B')
    ) STORED
);
CREATE INDEX offerings_published ON offerings (id DESC) WHERE status = 'published';
CREATE INDEX offerings_search ON offerings USING gin (search) WHERE status = 'published';
CREATE INDEX offerings_partner_ids ON offerings USING gin (partner_ids);
CREATE INDEX offerings_partner_kinds ON offerings USING gin (partner_kinds);
CREATE INDEX offerings_agreement_ids ON offerings USING gin (agreement_ids);
CREATE INDEX offerings_by_owner ON offerings (owner_id, id DESC);

CREATE TABLE offering_versions (
    offering_id  text        NOT NULL REFERENCES offerings (id),
    version      integer     NOT NULL,
    name         text        NOT NULL,
    description  text        NOT NULL,
    currency     text        NOT NULL,
    components   jsonb       NOT NULL,
    published_at timestamptz NOT NULL,
    PRIMARY KEY (offering_id, version)
);
