-- A partner lists its fulfilments of one status newest first (GET
-- /v1/fulfillments?status=), paging by id: with only (partner_id, id) the
-- walk reads every fulfilment of the partner to find the few accepted ones.
CREATE INDEX fulfillments_by_partner_status ON fulfillments (partner_id, status, id);
