//! Price board: latest price per instrument and venue, composite, staleness, sanity. (to be written).
