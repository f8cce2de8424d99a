-- A journal entry is closed when the transaction that created it commits.
--
-- The balance trigger checks each statement's postings, so without this a
-- later transaction could still add a balanced pair of postings to an old
-- entry ("charge:…" gaining a second fee) and rewrite history while every
-- entry kept summing to zero.  Each entry records the transaction that
-- created it; postings are refused unless they are written by that same
-- transaction.  pg_current_xact_id() is the top-level transaction's 64-bit id
-- (savepoints share it, and it never wraps around).  Entries written before
-- this migration carry the migration's own transaction: closed from now on.
ALTER TABLE journal_entries
    ADD COLUMN created_by_xact xid8 NOT NULL DEFAULT pg_current_xact_id();

-- A trigger of its own, beside the balance check rather than inside it: one
-- index probe per entry the statement touches, never per posting.
CREATE FUNCTION ledger_refuse_postings_to_closed_entries() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    closed text;
BEGIN
    SELECT e.entry_id INTO closed
      FROM (SELECT DISTINCT entry_id FROM new_postings) touched
      JOIN journal_entries e ON e.entry_id = touched.entry_id
     WHERE e.created_by_xact <> pg_current_xact_id()
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal entry % is closed: postings can only be added by the transaction that created it; book a correcting entry',
            closed USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER postings_only_while_their_entry_is_open AFTER INSERT ON postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_postings_to_closed_entries();
