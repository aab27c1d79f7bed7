//! lentera-broker
