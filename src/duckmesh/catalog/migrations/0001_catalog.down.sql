DROP VIEW IF EXISTS ingest_claim_item;
DROP TABLE IF EXISTS admin_audit, query_audit, integrity_run, gc_run, compaction_run, job_lease,
    snapshot_lease, snapshot_pin, file_live_range, snapshot_file, data_file, snapshot_table_watermark,
    snapshot, ingest_claim_batch, ingest_event, table_schema_version, table_def, api_key, tenant_head,
    tenant_counter, tenant CASCADE;
