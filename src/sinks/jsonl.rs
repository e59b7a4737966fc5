//! jsonl sink (to be written).
