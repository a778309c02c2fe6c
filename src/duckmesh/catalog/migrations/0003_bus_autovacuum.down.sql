ALTER TABLE ingest_event RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_cost_limit,
                                autovacuum_analyze_scale_factor);
