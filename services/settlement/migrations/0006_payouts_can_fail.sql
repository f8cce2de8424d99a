-- The bank can return a payout (a closed account, a wrong IBAN): the payout is
-- then `failed` and its money goes back to the partner's available balance
-- with a journal entry of its own, "failed:<payout_id>".
ALTER TABLE journal_entries DROP CONSTRAINT journal_entries_kind_check;
ALTER TABLE journal_entries ADD CONSTRAINT journal_entries_kind_check
    CHECK (kind IN ('charge', 'refund', 'release', 'payout', 'paid', 'failed'));

-- When the bank returned it (the return line's booked_at).
ALTER TABLE payouts ADD COLUMN failed_at timestamptz;

-- A payout's status only moves forward, as Stripe's does: pending → paid,
-- pending → failed, and paid → failed (a bank may return a transfer it first
-- booked).  Failed is final: a returned payout is never paid; its money is
-- paid again by a later run, as a new payout.
CREATE FUNCTION payouts_refuse_status_going_back() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
        (OLD.status = 'pending' AND NEW.status IN ('paid', 'failed'))
        OR (OLD.status = 'paid' AND NEW.status = 'failed')
    ) THEN
        RAISE EXCEPTION 'payout % is %: it cannot become %', OLD.payout_id, OLD.status, NEW.status
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER payouts_status_moves_forward BEFORE UPDATE OF status ON payouts
    FOR EACH ROW EXECUTE FUNCTION payouts_refuse_status_going_back();
