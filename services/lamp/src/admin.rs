//! The admin port: the shared `/healthz`, `/readyz`, `/metrics`, plus `GET /lamps`, the
//! controller's view for operators. `Observability::serve_admin` serves only the shared
//! three, so this builds the same server with one more route.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use lentera_bootstrap::Observability;

use crate::controller::Controller;

pub type Shared = Arc<Mutex<Controller>>;

/// Binds `addr` and returns the bound address and the (not yet polled) server.
pub fn serve(
    obs: &Observability,
    controller: Shared,
    addr: &str,
) -> anyhow::Result<(SocketAddr, actix_web::dev::Server)> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    let routes = obs.routes();
    let server = HttpServer::new(move || {
        App::new()
            .configure(routes.clone())
            .app_data(web::Data::new(controller.clone()))
            .route("/lamps", web::get().to(lamps))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok((bound, server))
}

async fn lamps(controller: web::Data<Shared>) -> HttpResponse {
    let view = controller.lock().unwrap().view(chrono::Utc::now());
    HttpResponse::Ok().json(serde_json::json!({ "lamps": view }))
}
