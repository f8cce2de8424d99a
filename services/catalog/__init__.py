"""Catalog: partners, customers, co-sell agreements and offerings."""
