"""PostgreSQL: the schema, migrations, the saga store, outbox rows and the one write path."""
