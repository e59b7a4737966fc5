//! The margin model.

mod props;
