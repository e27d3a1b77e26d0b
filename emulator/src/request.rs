//! Checking a `/v1/audio/speech` body the way the real API does, and OpenAI-style errors.

use serde_json::{json, Map, Value};

use herald::tts::{base_model, takes_instructions, AudioFormat, MAX_INPUT_CHARS, VOICES};

/// An error response: status plus OpenAI's `{"error":{message,type,param,code}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// `error.message`.
    pub message: String,
    /// `error.type`.
    pub kind: &'static str,
    /// `error.param`.
    pub param: Option<&'static str>,
    /// `error.code`.
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 `invalid_request_error`.
    pub fn invalid(
        message: String,
        param: Option<&'static str>,
        code: Option<&'static str>,
    ) -> Self {
        ApiError {
            status: 400,
            message,
            kind: "invalid_request_error",
            param,
            code,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        // Built by hand to keep OpenAI's field order (serde_json's map would sort it).
        let s = |v: Value| v.to_string();
        format!(
            r#"{{"error":{{"message":{},"type":{},"param":{},"code":{}}}}}"#,
            s(json!(self.message)),
            s(json!(self.kind)),
            s(json!(self.param)),
            s(json!(self.code)),
        )
    }
}

/// A validated speech request.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechBody {
    /// Model name as sent.
    pub model: String,
    /// Text to speak.
    pub input: String,
    /// Voice name.
    pub voice: String,
    /// Emulated format.
    pub format: AudioFormat,
    /// Speech speed (default 1.0).
    pub speed: f32,
    /// Voice instructions, if any.
    pub instructions: Option<String>,
}

const FIELDS: &[&str] = &[
    "model",
    "input",
    "voice",
    "response_format",
    "speed",
    "instructions",
    "stream_format",
];
const REAL_FORMATS: &[&str] = &["mp3", "opus", "aac", "flac", "wav", "pcm"];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn quoted_list(items: &[&str]) -> String {
    let q: Vec<String> = items.iter().map(|i| format!("'{i}'")).collect();
    match q.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{}, and {last}", rest.join(", ")),
        _ => q.join(""),
    }
}

/// Known models plus dated snapshots (`gpt-4o-mini-tts-2025-03-20`, `tts-1-1106`), by
/// herald's own rule, so the emulator accepts exactly what herald's validation lets out.
fn model_known(model: &str) -> bool {
    base_model(model).is_some()
}

/// tts-1 and tts-1-hd (and their snapshots): no `instructions` (herald's rule), no SSE.
fn is_tts1(model: &str) -> bool {
    !takes_instructions(model)
}

fn string_field<'a>(
    obj: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(ApiError::invalid(
            format!(
                "Invalid type for '{name}': expected a string, but got {} instead.",
                type_name(other)
            ),
            Some(name),
            Some("invalid_type"),
        )),
    }
}

fn required<'a>(obj: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, ApiError> {
    string_field(obj, name)?.ok_or_else(|| {
        ApiError::invalid(
            format!("Missing required parameter: '{name}'."),
            Some(name),
            Some("missing_required_parameter"),
        )
    })
}

/// Validates a request body like the real endpoint (field names, types, ranges, model rules).
pub fn validate(body: &[u8]) -> Result<SpeechBody, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| {
        ApiError::invalid(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)".to_string(),
            None,
            None,
        )
    })?;
    let obj = value.as_object().ok_or_else(|| {
        ApiError::invalid(
            format!(
                "Invalid type for request body: expected an object, but got {} instead.",
                type_name(&value)
            ),
            None,
            Some("invalid_type"),
        )
    })?;
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!("Unrecognized request argument supplied: {unknown}"),
            None,
            None,
        ));
    }
    let model = required(obj, "model")?;
    let input = required(obj, "input")?;
    let voice = required(obj, "voice")?;
    let chars = input.chars().count();
    if chars == 0 {
        return Err(ApiError::invalid(
            "Invalid 'input': string too short. Expected a string with minimum length 1, but got an empty string instead.".to_string(),
            Some("input"),
            Some("string_below_min_length"),
        ));
    }
    if chars > MAX_INPUT_CHARS {
        return Err(ApiError::invalid(
            format!("Invalid 'input': string too long. Expected a string with maximum length {MAX_INPUT_CHARS}, but got a string with length {chars} instead."),
            Some("input"),
            Some("string_above_max_length"),
        ));
    }
    if !VOICES.contains(&voice) {
        return Err(ApiError::invalid(
            format!(
                "Invalid value: '{voice}'. Supported values are: {}.",
                quoted_list(VOICES)
            ),
            Some("voice"),
            Some("invalid_value"),
        ));
    }
    // Absent means mp3 on the real API, which the emulator does not produce.
    let fmt = string_field(obj, "response_format")?.unwrap_or("mp3");
    let format = match fmt {
        "opus" => AudioFormat::Opus,
        "pcm" => AudioFormat::Pcm,
        f if REAL_FORMATS.contains(&f) => {
            return Err(ApiError::invalid(
                format!("response_format '{f}' is valid for the real API but not emulated: the emulator produces only 'opus' and 'pcm'."),
                Some("response_format"),
                Some("invalid_value"),
            ))
        }
        f => {
            return Err(ApiError::invalid(
                format!(
                    "Invalid value: '{f}'. Supported values are: {}.",
                    quoted_list(REAL_FORMATS)
                ),
                Some("response_format"),
                Some("invalid_value"),
            ))
        }
    };
    let speed = match obj.get("speed") {
        None | Some(Value::Null) => 1.0,
        Some(Value::Number(n)) => {
            let s = n.as_f64().unwrap_or(f64::NAN);
            if s.is_nan() || s < 0.25 {
                return Err(ApiError::invalid(
                    format!("Invalid 'speed': decimal below minimum value. Expected a value >= 0.25, but got {n} instead."),
                    Some("speed"),
                    Some("decimal_below_min_value"),
                ));
            }
            if s > 4.0 {
                return Err(ApiError::invalid(
                    format!("Invalid 'speed': decimal above maximum value. Expected a value <= 4, but got {n} instead."),
                    Some("speed"),
                    Some("decimal_above_max_value"),
                ));
            }
            s as f32
        }
        Some(other) => {
            return Err(ApiError::invalid(
                format!(
                    "Invalid type for 'speed': expected a decimal, but got {} instead.",
                    type_name(other)
                ),
                Some("speed"),
                Some("invalid_type"),
            ))
        }
    };
    let instructions = string_field(obj, "instructions")?;
    let stream_format = string_field(obj, "stream_format")?;
    if !model_known(model) {
        // The real API answers an unknown model with 404 model_not_found.
        return Err(ApiError {
            status: 404,
            message: format!("The model `{model}` does not exist or you do not have access to it."),
            kind: "invalid_request_error",
            param: None,
            code: Some("model_not_found"),
        });
    }
    if instructions.is_some() && is_tts1(model) {
        return Err(ApiError::invalid(
            format!("Instructions are not supported for model '{model}'; use gpt-4o-mini-tts."),
            Some("instructions"),
            Some("unsupported_parameter"),
        ));
    }
    match stream_format {
        None | Some("audio") => {}
        Some("sse") if is_tts1(model) => {
            return Err(ApiError::invalid(
                format!("stream_format 'sse' is not supported for model '{model}'."),
                Some("stream_format"),
                Some("unsupported_parameter"),
            ))
        }
        Some("sse") => {
            return Err(ApiError::invalid(
                "stream_format 'sse' is valid for the real API but not emulated: use 'audio'."
                    .to_string(),
                Some("stream_format"),
                Some("invalid_value"),
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                format!("Invalid value: '{other}'. Supported values are: 'audio' and 'sse'."),
                Some("stream_format"),
                Some("invalid_value"),
            ))
        }
    }
    Ok(SpeechBody {
        model: model.to_string(),
        input: input.to_string(),
        voice: voice.to_string(),
        format,
        speed,
        instructions: instructions.map(str::to_string),
    })
}

/// Masks a key like OpenAI does ("sk-te****1234"); short keys show nothing of themselves.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "****".to_string();
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_snapshots_are_models() {
        assert!(model_known("gpt-4o-mini-tts-2025-03-20"));
        assert!(model_known("tts-1-hd"));
        assert!(model_known("tts-1-1106"));
        assert!(!model_known("tts-2"));
        assert!(!model_known("gpt-4o-mini-tts-x"));
    }

    #[test]
    fn tts1_family_includes_hd_and_snapshots_only() {
        assert!(is_tts1("tts-1") && is_tts1("tts-1-hd") && is_tts1("tts-1-hd-1106"));
        assert!(!is_tts1("gpt-4o-mini-tts") && !is_tts1("gpt-4o-mini-tts-2025-03-20"));
    }

    #[test]
    fn masked_key_never_contains_the_key() {
        let k = "sk-test-0123456789abcd1234";
        let m = mask_key(k);
        assert_eq!(m, "sk-te****1234");
        assert!(!mask_key("sk-short").contains("short"));
    }

    #[test]
    fn error_body_keeps_openais_field_order_and_escapes() {
        let e = ApiError::invalid("bad \"x\"".into(), Some("input"), None);
        let body = e.body();
        assert!(
            body.starts_with(r#"{"error":{"message":"bad \"x\"","type":"#),
            "{body}"
        );
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["param"], "input");
        assert!(v["error"]["code"].is_null());
    }

    #[test]
    fn minimal_body_defaults() {
        let b =
            validate(br#"{"model":"tts-1","input":"hi","voice":"nova","response_format":"pcm"}"#)
                .unwrap();
        assert_eq!(b.speed, 1.0);
        assert_eq!(b.format, AudioFormat::Pcm);
        let e = validate(br#"{"model":"tts-1","input":"hi","voice":"nova"}"#).unwrap_err();
        assert!(e.message.contains("not emulated"), "{}", e.message);
    }
}
