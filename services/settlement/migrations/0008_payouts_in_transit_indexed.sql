-- Every reconciliation lists the payouts still in transit (status 'pending',
-- in payout_id order) to find the missing ones.  Without an index that read
-- every payout ever made; pending ones are few at any time, so a partial
-- index holds only them and serves the order too.
CREATE INDEX payouts_pending ON payouts (payout_id) WHERE status = 'pending';
