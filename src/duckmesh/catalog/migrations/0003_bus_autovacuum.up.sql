-- Every event row is rewritten on claim and on ack and deleted by bus cleanup: vacuum the bus
-- early and fast so dead tuples do not pile up under sustained ingest (the benchmark saw 2 dead
-- rows per live one before autovacuum's default 20 % threshold kicked in).
ALTER TABLE ingest_event SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_cost_limit = 2000,
                              autovacuum_analyze_scale_factor = 0.02);
