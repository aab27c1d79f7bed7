//! lentera-ingest
