-- A payout's money facts (who, how much, in what, under which reference, for
-- which run) never change once written: the bank matches on them and the
-- ledger already moved that money.  Only its status may move forward (a
-- reconciliation marks it paid); a payout is never deleted.
CREATE FUNCTION payouts_refuse_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'DELETE on payouts is refused: a payout made stays on record'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF (NEW.payout_id, NEW.partner_id, NEW.currency, NEW.amount, NEW.reference, NEW.as_of,
        NEW.created_at)
       IS DISTINCT FROM
       (OLD.payout_id, OLD.partner_id, OLD.currency, OLD.amount, OLD.reference, OLD.as_of,
        OLD.created_at) THEN
        RAISE EXCEPTION 'payout % keeps its terms: only its status may change', OLD.payout_id
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER payouts_keep_their_terms BEFORE UPDATE OR DELETE ON payouts
    FOR EACH ROW EXECUTE FUNCTION payouts_refuse_rewrite();
CREATE TRIGGER payouts_never_truncated BEFORE TRUNCATE ON payouts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
