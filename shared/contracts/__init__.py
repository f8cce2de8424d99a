"""Event contracts: the only thing services share besides Kafka itself.

Compatibility rule (read before changing anything here):

* A published event type is a contract.  Its wire name (``EVENT_TYPE``) never
  changes and never names a Python class.
* Within one ``SCHEMA_VERSION`` you may only *add* fields, and every added
  field must have a default, so old messages still decode and old consumers
  ignore what they do not know.
* Anything else (renaming, removing, changing a type or a meaning) is a new
  schema version: a new Struct with ``SCHEMA_VERSION = n + 1`` and an upcaster
  registered in ``EventRegistry`` that turns version ``n`` into ``n + 1``.
  Producers move to the new version only after every consumer can read it.
"""
