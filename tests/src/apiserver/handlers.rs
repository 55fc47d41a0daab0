//! HTTP: routing of Kubernetes API paths, verbs, query parameters, and JSON responses. Every
//! failure is a `Status` body; nothing here panics on request input.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use super::auth::{self, Attributes, User};
use super::discovery;
use super::disruption;
use super::kinds::{self, FieldValidation, Kind};
use super::ops::{self, Part, namespace_of};
use super::patch::{self, PatchType};
use super::selectors::{FieldQuery, LabelQuery};
use super::state::Shared;
use super::status::{ApiError, success_status};
use super::store::{self, meta_str};
use super::table;
use super::watch::{self, WatchRequest};

/// What every request handler gets.
pub(crate) struct App {
    pub shared: Arc<Shared>,
    /// `127.0.0.1:PORT`, for `/api`'s serverAddressByClientCIDRs.
    pub address: String,
}

/// One incoming request, parsed.
struct Request {
    method: Method,
    path: String,
    query: BTreeMap<String, String>,
    headers: HeaderMap,
    body: Bytes,
}

impl Request {
    fn param(&self, key: &str) -> Option<&str> {
        self.query.get(key).map(String::as_str)
    }

    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }
}

/// The single axum handler: every path goes through here.
pub(crate) async fn handle(
    State(app): State<Arc<App>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let request = Request {
        method,
        path: uri.path().to_string(),
        query,
        headers,
        body,
    };
    let response = match dispatch(&app, &request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    tracing::debug!(
        method = %request.method,
        uri = %uri,
        status = response.status().as_u16(),
        "fake apiserver request"
    );
    response
}

fn json_response(code: u16, value: &Value, warnings: &[String]) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    let mut response = (status, value.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for warning in warnings {
        let text = format!(
            "299 - \"{}\"",
            warning.replace('\\', "\\\\").replace('"', "\\\"")
        );
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.append(header::WARNING, value);
        }
    }
    response
}

fn get_only(request: &Request, value: Option<Value>) -> Result<Response, ApiError> {
    if request.method != Method::GET {
        return Err(ApiError::method_not_allowed());
    }
    value
        .map(|v| json_response(200, &v, &[]))
        .ok_or_else(ApiError::no_route)
}

async fn dispatch(app: &Arc<App>, request: &Request) -> Result<Response, ApiError> {
    let trimmed = request.path.trim_end_matches('/');
    match trimmed {
        "/version" => return get_only(request, Some(discovery::version())),
        "/healthz" | "/livez" | "/readyz" => {
            return Ok(
                (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response(),
            );
        }
        _ => {}
    }
    let user = auth::authenticate(&app.shared, &request.headers)?;
    let segments: Vec<&str> = trimmed.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api"] => get_only(request, Some(discovery::api_versions(&app.address))),
        ["apis"] => get_only(request, Some(discovery::api_group_list())),
        ["api", "v1"] => get_only(request, discovery::resource_list("", "v1")),
        ["apis", group] => get_only(request, discovery::api_group(group)),
        ["apis", group, version] => get_only(request, discovery::resource_list(group, version)),
        ["openapi", "v3"] => get_only(request, Some(discovery::openapi_v3_index())),
        ["openapi", "v3", rest @ ..] => {
            get_only(request, discovery::openapi_v3_document(&rest.join("/")))
        }
        ["api", "v1", rest @ ..] => resource(app, request, &user, "", "v1", rest).await,
        ["apis", group, version, rest @ ..] => {
            resource(app, request, &user, group, version, rest).await
        }
        _ => Err(ApiError::no_route()),
    }
}

/// A parsed resource path: `[namespaces/{ns}/]{plural}[/{name}[/{subresource}]]`.
struct Target<'a> {
    kind: Kind,
    namespace: String,
    name: Option<&'a str>,
    subresource: Option<&'a str>,
}

fn parse_target<'a>(group: &str, version: &str, rest: &[&'a str]) -> Result<Target<'a>, ApiError> {
    let namespaced_kind =
        |plural: &str| Kind::from_path(group, version, plural).filter(|k| k.info().namespaced);
    let (kind, namespace, tail) = match rest {
        ["namespaces", ns, plural, tail @ ..] if namespaced_kind(plural).is_some() => (
            namespaced_kind(plural).ok_or_else(ApiError::no_route)?,
            ns.to_string(),
            tail,
        ),
        [plural, tail @ ..] => (
            Kind::from_path(group, version, plural).ok_or_else(ApiError::no_route)?,
            String::new(),
            tail,
        ),
        [] => return Err(ApiError::no_route()),
    };
    let (name, subresource) = match tail {
        [] => (None, None),
        [name] => (Some(*name), None),
        [name, sub] => (Some(*name), Some(*sub)),
        _ => return Err(ApiError::no_route()),
    };
    if kind.info().namespaced && namespace.is_empty() && name.is_some() {
        return Err(ApiError::no_route());
    }
    match subresource {
        None => {}
        Some("status") if kind.info().has_status => {}
        Some("eviction") if kind == Kind::Pod => {}
        Some(_) => return Err(ApiError::no_route()),
    }
    Ok(Target {
        kind,
        namespace,
        name,
        subresource,
    })
}

async fn resource(
    app: &Arc<App>,
    request: &Request,
    user: &User,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response, ApiError> {
    let (watch_path, rest) = match rest {
        ["watch", rest @ ..] => (true, rest),
        _ => (false, rest),
    };
    let target = parse_target(group, version, rest)?;
    let watch_param = matches!(request.param("watch"), Some("true") | Some("1"));
    let verb = match (&request.method, target.name, target.subresource) {
        (&Method::GET, None, None) if watch_path || watch_param => "watch",
        (&Method::GET, None, None) => "list",
        (&Method::GET, Some(_), None | Some("status")) if !watch_path => "get",
        (&Method::POST, None, None)
            if !target.kind.info().namespaced || !target.namespace.is_empty() =>
        {
            "create"
        }
        (&Method::POST, Some(_), Some("eviction")) => "create",
        (&Method::PUT, Some(_), None | Some("status")) => "update",
        (&Method::PATCH, Some(_), None | Some("status")) => "patch",
        (&Method::DELETE, Some(_), None) => "delete",
        _ => return Err(ApiError::method_not_allowed()),
    };
    let fields = match request.param("fieldSelector") {
        Some(text) => FieldQuery::parse(text, target.kind)?,
        None => FieldQuery::default(),
    };
    let labels = match request.param("labelSelector") {
        Some(text) => LabelQuery::parse(text)?,
        None => LabelQuery::default(),
    };
    let name = target.name.unwrap_or_default();
    let attrs = Attributes {
        verb,
        kind: target.kind,
        subresource: target.subresource,
        namespace: &target.namespace,
        name,
        fields: &fields,
    };
    {
        let world = app.shared.world();
        auth::authorize(user, &attrs, &world)?;
    }
    if request.param("dryRun").is_some_and(|d| !d.is_empty())
        && verb != "get"
        && verb != "list"
        && verb != "watch"
    {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the test world's API server",
        ));
    }

    let response = match (verb, target.subresource) {
        ("get", _) => get(app, request, &target, name),
        ("list", _) => list(app, request, &target, &labels, &fields),
        ("watch", _) => start_watch(app, request, &target, labels, fields),
        ("create", Some("eviction")) => {
            let result = evict(app, request, user, &attrs, &target, name);
            let code = match &result {
                Ok(_) => 201,
                Err(e) => e.code,
            };
            app.shared
                .world()
                .evictions
                .push((format!("{}/{name}", target.namespace), code));
            result
        }
        ("create", _) => create(app, request, user, &attrs, &target),
        ("update", _) => update(app, request, user, &attrs, &target, name),
        ("patch", _) => patch_object(app, request, user, &attrs, &target, name),
        ("delete", _) => delete(app, request, user, &attrs, &target, name),
        _ => Err(ApiError::method_not_allowed()),
    };
    if matches!(verb, "create" | "update" | "patch" | "delete") {
        app.shared.changed.notify_one();
    }
    response
}

fn get(
    app: &App,
    request: &Request,
    target: &Target<'_>,
    name: &str,
) -> Result<Response, ApiError> {
    let world = app.shared.world();
    let object = world
        .store
        .get(
            target.kind,
            namespace_of(target.kind, &target.namespace),
            name,
        )
        .ok_or_else(|| ApiError::not_found(target.kind.resource(), name))?;
    if table::wants_table(request.header(header::ACCEPT)) {
        return Ok(json_response(
            200,
            &table::table(target.kind, &[object], world.store.rv()),
            &[],
        ));
    }
    Ok(json_response(200, object, &[]))
}

fn list(
    app: &App,
    request: &Request,
    target: &Target<'_>,
    labels: &LabelQuery,
    fields: &FieldQuery,
) -> Result<Response, ApiError> {
    let world = app.shared.world();
    let namespace = (!target.namespace.is_empty()).then_some(target.namespace.as_str());
    let objects: Vec<&Value> = world
        .store
        .list(target.kind, namespace)
        .into_iter()
        .filter(|o| labels.matches(&store::labels(o)) && fields.matches(o))
        .collect();
    let rv = world.store.rv();
    if table::wants_table(request.header(header::ACCEPT)) {
        return Ok(json_response(
            200,
            &table::table(target.kind, &objects, rv),
            &[],
        ));
    }
    // A real server's list items carry no apiVersion/kind; the list does.
    let items: Vec<Value> = objects
        .into_iter()
        .map(|o| {
            let mut item = o.clone();
            if let Some(map) = item.as_object_mut() {
                map.remove("apiVersion");
                map.remove("kind");
            }
            item
        })
        .collect();
    let info = target.kind.info();
    Ok(json_response(
        200,
        &json!({
            "kind": format!("{}List", info.kind),
            "apiVersion": target.kind.api_version(),
            "metadata": { "resourceVersion": rv.to_string() },
            "items": items,
        }),
        &[],
    ))
}

fn start_watch(
    app: &App,
    request: &Request,
    target: &Target<'_>,
    labels: LabelQuery,
    fields: FieldQuery,
) -> Result<Response, ApiError> {
    let resource_version = match request.param("resourceVersion") {
        None | Some("") => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: \"{text}\": must be a number"
            ))
        })?),
    };
    let timeout = match request.param("timeoutSeconds") {
        None | Some("") => None,
        Some(text) => Some(Duration::from_secs(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("timeoutSeconds: Invalid value: \"{text}\""))
        })?)),
    };
    let watch_request = WatchRequest {
        kind: target.kind,
        namespace: (!target.namespace.is_empty()).then(|| target.namespace.clone()),
        labels,
        fields,
        resource_version,
        bookmarks: request.param("allowWatchBookmarks") == Some("true"),
        send_initial_events: request.param("sendInitialEvents") == Some("true"),
        timeout,
        table: table::wants_table(request.header(header::ACCEPT)),
    };
    let body: Body = watch::start(app.shared.clone(), watch_request)?;
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// The request body as JSON (or YAML), with unsupported media types refused.
fn body_value(request: &Request, what: &str) -> Result<Value, ApiError> {
    let content_type = request.header(header::CONTENT_TYPE).to_ascii_lowercase();
    let media = content_type.split(';').next().unwrap_or_default().trim();
    match media {
        "" | "application/json" | "*/*" => kinds::parse_json(&request.body, what),
        "application/yaml" | "application/x-yaml" => patch::parse_apply(&request.body),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn field_validation(request: &Request) -> Result<FieldValidation, ApiError> {
    FieldValidation::parse(request.param("fieldValidation"))
}

fn create(
    app: &App,
    request: &Request,
    user: &User,
    attrs: &Attributes<'_>,
    target: &Target<'_>,
) -> Result<Response, ApiError> {
    let validation = field_validation(request)?;
    let body = body_value(request, "the object provided is unrecognized")?;
    let (object, unknown) = target.kind.decode(body)?;
    let warnings = validation.check(&unknown, &target.kind.decode_context())?;
    let mut world = app.shared.world();
    let attrs = Attributes {
        name: meta_str(&object, "name"),
        ..*attrs
    };
    auth::admit(user, &attrs, Some(&object), None, &world)?;
    let created = ops::create(&mut world, target.kind, &target.namespace, object)?;
    Ok(json_response(201, &created, &warnings))
}

fn part(target: &Target<'_>) -> Part {
    if target.subresource == Some("status") {
        Part::Status
    } else {
        Part::Main
    }
}

fn update(
    app: &App,
    request: &Request,
    user: &User,
    attrs: &Attributes<'_>,
    target: &Target<'_>,
    name: &str,
) -> Result<Response, ApiError> {
    let validation = field_validation(request)?;
    let body = body_value(request, "the object provided is unrecognized")?;
    let (object, unknown) = target.kind.decode(body)?;
    let warnings = validation.check(&unknown, &target.kind.decode_context())?;
    let mut world = app.shared.world();
    let result = ops::prepare_update(
        &world,
        target.kind,
        &target.namespace,
        name,
        part(target),
        object,
    )?;
    let old = world
        .store
        .get(
            target.kind,
            namespace_of(target.kind, &target.namespace),
            name,
        )
        .cloned();
    auth::admit(user, attrs, Some(&result), old.as_ref(), &world)?;
    let stored = world.store.update(target.kind, result);
    Ok(json_response(200, &stored, &warnings))
}

fn patch_object(
    app: &App,
    request: &Request,
    user: &User,
    attrs: &Attributes<'_>,
    target: &Target<'_>,
    name: &str,
) -> Result<Response, ApiError> {
    let validation = field_validation(request)?;
    let patch_type = PatchType::from_content_type(request.header(header::CONTENT_TYPE))?;
    if patch_type == PatchType::Apply && request.param("fieldManager").is_none_or(str::is_empty) {
        return Err(ApiError::bad_request(
            "fieldManager is required for apply requests",
        ));
    }
    let mut world = app.shared.world();
    let ns = namespace_of(target.kind, &target.namespace);
    let Some(old) = world.store.get(target.kind, ns, name).cloned() else {
        if patch_type == PatchType::Apply && target.subresource.is_none() {
            // Server-side apply of an object that does not exist creates it.
            let (object, unknown) = target.kind.decode(patch::parse_apply(&request.body)?)?;
            let warnings = validation.check(&unknown, &target.kind.decode_context())?;
            if meta_str(&object, "name") != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    meta_str(&object, "name")
                )));
            }
            let create_attrs = Attributes {
                verb: "create",
                ..*attrs
            };
            auth::admit(user, &create_attrs, Some(&object), None, &world)?;
            let created = ops::create(&mut world, target.kind, &target.namespace, object)?;
            return Ok(json_response(201, &created, &warnings));
        }
        return Err(ApiError::not_found(target.kind.resource(), name));
    };
    let mut document = old.clone();
    patch::apply(&mut document, patch_type, &request.body)?;
    let (object, unknown) = target.kind.decode(document)?;
    let warnings = validation.check(&unknown, &target.kind.decode_context())?;
    let result = ops::prepare_update(
        &world,
        target.kind,
        &target.namespace,
        name,
        part(target),
        object,
    )?;
    auth::admit(user, attrs, Some(&result), Some(&old), &world)?;
    let stored = world.store.update(target.kind, result);
    Ok(json_response(200, &stored, &warnings))
}

fn delete(
    app: &App,
    request: &Request,
    user: &User,
    attrs: &Attributes<'_>,
    target: &Target<'_>,
    name: &str,
) -> Result<Response, ApiError> {
    let validation = field_validation(request)?;
    let (options, unknown) = if request.body.iter().all(u8::is_ascii_whitespace) {
        (Default::default(), Vec::new())
    } else {
        kinds::decode_delete_options(body_value(request, "DeleteOptions")?)?
    };
    let warnings = validation.check(
        &unknown,
        "DeleteOptions in version \"v1\" cannot be handled as a DeleteOptions",
    )?;
    let grace = match request.param("gracePeriodSeconds") {
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!("gracePeriodSeconds: Invalid value: \"{text}\""))
        })?),
        None => options.grace_period_seconds,
    };
    let propagation = request
        .param("propagationPolicy")
        .map(str::to_string)
        .or(options.propagation_policy.clone());
    let orphan =
        propagation.as_deref() == Some("Orphan") || options.orphan_dependents == Some(true);
    let mut world = app.shared.world();
    let ns = namespace_of(target.kind, &target.namespace);
    let old = world.store.get(target.kind, ns, name).cloned();
    auth::admit(user, attrs, None, old.as_ref(), &world)?;
    if target.kind == Kind::Pod {
        let pod = ops::delete_pod(
            &mut world,
            &target.namespace,
            name,
            grace,
            options.preconditions.as_ref(),
            app.shared.pod_stop_delay,
        )?;
        world.deletions.push(format!("{}/{name}", target.namespace));
        return Ok(json_response(200, &pod, &warnings));
    }
    let deleted = ops::delete_object(
        &mut world,
        target.kind,
        &target.namespace,
        name,
        options.preconditions.as_ref(),
        orphan,
        app.shared.pod_stop_delay,
    )?;
    let info = target.kind.info();
    let mut details =
        json!({ "name": name, "kind": info.plural, "uid": meta_str(&deleted, "uid") });
    if !info.group.is_empty() {
        details["group"] = json!(info.group);
    }
    Ok(json_response(
        200,
        &success_status(200, Some(details)),
        &warnings,
    ))
}

fn evict(
    app: &App,
    request: &Request,
    user: &User,
    attrs: &Attributes<'_>,
    target: &Target<'_>,
    name: &str,
) -> Result<Response, ApiError> {
    let validation = field_validation(request)?;
    let body = body_value(request, "the object provided is unrecognized")?;
    let body_name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let body_namespace = body
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let (eviction, unknown) = kinds::decode_eviction(body.clone())?;
    let warnings = validation.check(
        &unknown,
        "Eviction in version \"v1\" cannot be handled as a Eviction",
    )?;
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    if !body_namespace.is_empty() && body_namespace != target.namespace {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut world = app.shared.world();
    auth::admit(user, attrs, Some(&body), None, &world)?;
    let status = disruption::evict(
        &mut world,
        &target.namespace,
        name,
        &eviction,
        app.shared.pod_stop_delay,
    )?;
    Ok(json_response(201, &status, &warnings))
}
