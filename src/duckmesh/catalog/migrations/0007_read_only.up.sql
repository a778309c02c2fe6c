-- Emergency read-only mode (ADR 0012). One row per switched-on scope: a tenant, or every tenant at
-- once (tenant_id NULL: the global switch, which only the CLI sets). While a scope is read-only the
-- API answers new writes with 503 READ_ONLY; queries, and the publication of events accepted
-- before the switch, go on.
CREATE TABLE read_only_switch (
    tenant_id  bigint REFERENCES tenant ON DELETE CASCADE,
    reason     text NOT NULL,
    set_by     text NOT NULL,
    set_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX read_only_switch_scope ON read_only_switch ((coalesce(tenant_id, 0)));
