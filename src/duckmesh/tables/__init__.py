"""Table lifecycle (create, alter, drop) and snapshot restore: each one commit of its own."""
