//! lentera-historian
