"""PostgreSQL catalog: the only code that writes catalog SQL."""
