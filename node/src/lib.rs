//! The node library (wire types first).
