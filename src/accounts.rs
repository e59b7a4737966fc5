//! Account map over DashMap with an instrument → holders index and incremental caches. (to be written).
