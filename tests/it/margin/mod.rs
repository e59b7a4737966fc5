//! The margin model.

mod extremes;
mod nearest;
mod props;
