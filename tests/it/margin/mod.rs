//! The margin model.

mod extremes;
mod props;
