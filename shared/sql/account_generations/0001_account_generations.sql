-- A service's projection of the catalog's accounts, as far as tokens need it:
-- the current token generation of each partner and customer, from the
-- compacted topic catalog.accounts. A token older than this is refused.
CREATE TABLE account_generations (
    role       text        NOT NULL CHECK (role IN ('partner', 'customer')),
    subject    text        NOT NULL,
    generation integer     NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, subject)
);
