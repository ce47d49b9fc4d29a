//! The scheduler: binds pods without a node to the node that fits best (filter -> score -> bind).
