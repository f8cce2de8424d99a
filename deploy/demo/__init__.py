"""``make demo``: a co-sell day played against a running marketplace.

A client only: it talks to catalog, orders and settlement over HTTP and reads
the partners' fulfilment requests from Kafka, exactly as outside partners,
customers and the operator would.  ``plan`` decides the day from a seed (pure),
``actors`` plays it, ``statements``/``bank`` read and build the money documents
(pure) and ``summary`` prints what happened (pure).
"""
