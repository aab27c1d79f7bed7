//! lentera-lamp
