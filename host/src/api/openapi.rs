//! The API's OpenAPI 3.1 document, generated from the handlers' own
//! annotations and types (utoipa): the router registers each handler
//! through `utoipa_axum::routes!`, so a route cannot exist without its
//! entry in the document. Served at `GET /api/v1/openapi.json`, browsable
//! at `/docs`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorCode, ErrorObject};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lambda-microservice",
        description = "Run JavaScript, Python and Rust functions as WebAssembly components: \
                       initialize a session of a function, then execute it. See API.md.",
    ),
    tags(
        (name = "sessions", description = "Start a function and run it"),
        (name = "functions", description = "The function registry"),
        (name = "operations", description = "Health, metrics and this document"),
    ),
    // Served by a route of its own: the document is not an input of itself.
    paths(document),
    components(schemas(ErrorBody, ErrorObject, ErrorCode)),
    modifiers(&BearerToken),
)]
pub struct ApiDoc;

/// Tokens are HS256 JWTs in `Authorization: Bearer`.
struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The document, as built by the router.
#[derive(Clone)]
pub struct Document(pub Arc<utoipa::openapi::OpenApi>);

/// This document.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
)]
pub async fn document(State(document): State<Document>) -> Json<Arc<utoipa::openapi::OpenApi>> {
    Json(document.0)
}
