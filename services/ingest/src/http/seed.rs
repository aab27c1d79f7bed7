//! `POST /sensor {"suhu": 27.5}` — the seed's Flask endpoint, so its `client.py`
//! (`requests.post(url, json={"suhu": …})`) works unchanged against the platform.
//!
//! The value becomes metric `temperature` of `ingest.seed_device` in open mode (the
//! demo, where client.py runs unchanged), or of the device whose
//! `Authorization: Bearer <token>` came with it (closed mode); the answer is the
//! seed's own `{"status":"success","message":"Suhu 27.5 diterima"}`, with the number
//! printed the way Python's f-string printed it. The `[limits]` apply: an implausible
//! value is `400 invalid_reading` with `detail.code` `out_of_range`.

use actix_web::{HttpRequest, HttpResponse, web};
use lentera_protocol::{DeviceId, Reading};
use serde_json::{Number, Value, json};

use super::error::ApiError;
use super::{HttpState, JSON, auth, read_json};
use crate::stamps::{Origin, Received};

pub async fn post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, ApiError> {
    let result = match auth::from_bearer(&req, &state).await {
        Ok(who) => accept(&req, payload, &state, who).await,
        Err(e) => Err(e),
    };
    match &result {
        Ok(_) => state.stats.accepted_http.inc(),
        Err(e) => state.stats.reject(e.code()),
    }
    let suhu = result?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "success",
        "message": format!("Suhu {suhu} diterima"),
    })))
}

/// Publishes the reading and returns `suhu` as Python would print it. The reading is
/// the bearer token's device's (closed mode) or `ingest.seed_device`'s (open mode).
async fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    state: &HttpState,
    who: Option<DeviceId>,
) -> Result<String, ApiError> {
    let device = who.unwrap_or_else(|| state.seed_device.clone());
    auth::rate(state, &device)?;
    let (body, _) = read_json(req, payload, state, &[JSON]).await?;
    let number = match body.get("suhu") {
        Some(Value::Number(n)) => n.clone(),
        _ => return Err(ApiError::InvalidSuhu),
    };
    let value = number.as_f64().ok_or(ApiError::InvalidSuhu)?;
    let mut reading = Reading::new(
        device,
        chrono::DateTime::UNIX_EPOCH,
        [("temperature".to_owned(), value)],
    )
    .map_err(|_| ApiError::InvalidSuhu)?;
    // The seed's client sends no time: a receive time unique for the device (two posts in
    // one millisecond are two readings), and the same plausibility rules as every other
    // entry (a 500 °C "suhu" is a broken sensor).
    // A retry of a post answered 503 while the broker may have it gets its first
    // receive time again (`crate::in_doubt`).
    let received = {
        let mut receipt = state.stamps.receipt();
        reading.ts = receipt.stamp(&reading.device);
        state
            .limits
            .check(&reading, receipt.now())
            .map_err(|error| ApiError::InvalidReading { index: 0, error })?;
        let mut received = Received::one(reading, Origin::Fresh);
        receipt.settle(&mut received);
        received
    };
    if let Err(e) = state.publisher.readings(&received.readings).await {
        state.stamps.failed(&received, &e);
        return Err(e.into());
    }
    Ok(python_str(&number))
}

/// `str()` of the number Python's `json` module would have produced: integers stay
/// integers (`30`), floats use `repr` (`27.5`, `30.0`, `1e+16`, `1e-05`).
pub fn python_str(n: &Number) -> String {
    match (n.as_i64(), n.as_u64(), n.as_f64()) {
        (Some(i), _, _) => i.to_string(),
        (_, Some(u), _) => u.to_string(),
        (_, _, Some(f)) => python_float_repr(f),
        _ => n.to_string(),
    }
}

/// Python's `float.__repr__`: the shortest digits that round-trip (Rust finds the same
/// digits), positional for decimal exponents in [-4, 16), scientific otherwise, and
/// always a `.0` on whole numbers in positional form.
pub fn python_float_repr(f: f64) -> String {
    if !f.is_finite() {
        return if f.is_nan() {
            "nan".into()
        } else if f > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    // `{:e}` gives the shortest round-trip digits as `d.ddde<exp>`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci
        .split_once('e')
        .expect("LowerExp always has an exponent");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f.is_sign_negative() { "-" } else { "" };
    let body = if (-4..16).contains(&exp) {
        if exp < 0 {
            format!("0.{}{}", "0".repeat((-exp - 1) as usize), digits)
        } else {
            let point = exp as usize + 1;
            if digits.len() <= point {
                format!("{}{}.0", digits, "0".repeat(point - digits.len()))
            } else {
                format!("{}.{}", &digits[..point], &digits[point..])
            }
        }
    } else {
        let mant = if digits.len() == 1 {
            digits.clone()
        } else {
            format!("{}.{}", &digits[..1], &digits[1..])
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{mant}e{esign}{:02}", exp.abs())
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(json_text: &str) -> String {
        let v: Value = serde_json::from_str(json_text).unwrap();
        python_str(v.as_number().unwrap())
    }

    #[test]
    fn prints_numbers_like_python() {
        // Each pair checked against CPython 3: str(json.loads(text)).
        let cases = [
            ("27.5", "27.5"),
            ("30", "30"),
            ("30.0", "30.0"),
            ("-3", "-3"),
            ("-0.0", "-0.0"),
            ("0.1", "0.1"),
            ("27.35", "27.35"),
            ("1e5", "100000.0"),
            ("123456789012345.6", "123456789012345.6"),
            ("1e16", "1e+16"),
            ("1.5e16", "1.5e+16"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("1.25e-7", "1.25e-07"),
            ("18446744073709551615", "18446744073709551615"),
        ];
        for (text, want) in cases {
            assert_eq!(py(text), want, "{text}");
        }
    }
}
