//! lentera-web
