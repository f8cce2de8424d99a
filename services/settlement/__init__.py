"""Settlement: the double-entry ledger, partner payouts and bank reconciliation."""
