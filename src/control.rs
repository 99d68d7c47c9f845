//! The control socket between the CLI and the daemon: one request and one
//! response per connection, each a 4-byte big-endian length and a JSON
//! body of at most [`MAX_FRAME`] bytes. The daemon learns who is asking from
//! the socket's peer credentials, never from the request.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest request or response body.
pub const MAX_FRAME: usize = 64 * 1024;
/// How long either side waits for the other.
pub const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Which guest session is the caller in?
    Whoami,
    /// The calling guest asks to leave: the daemon shows a one-time code
    /// on the terminal of the caller's SSH login and answers `confirm`.
    Leave,
    /// The code typed back: status `left`, sessions end.
    ConfirmLeave { code: String },
    /// Root only: re-read the grant file now.
    Reload,
    /// From the guest portal: the shares of the key that authenticated
    /// the caller's portal session (named again here, and checked against
    /// the session's own record).
    PortalList { fingerprint: String },
    /// From the guest portal: the guest's answer to one owner.
    PortalAnswer {
        fingerprint: String,
        owner: String,
        answer: Answer,
    },
}

/// What a guest answers through the portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Accept,
    Reject,
    Leave,
}

impl Answer {
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Accept => "accept",
            Answer::Reject => "reject",
            Answer::Leave => "leave",
        }
    }
}

/// One share of a guest, as the portal shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub owner: String,
    /// The guest's name in that owner's grant.
    pub guest: String,
    pub status: crate::grant::model::Status,
    /// The owner's "Share VM" switch.
    pub sharing: bool,
    /// The guest may log in as the owner now.
    pub access: bool,
    /// When access ends (RFC 3339, UTC).
    pub expires: Option<String>,
    pub expired: bool,
    /// The client addresses allowed; `None`: any.
    pub from: Option<Vec<String>>,
    pub admin: bool,
}

/// A guest session as the daemon knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub owner: String,
    pub guest: String,
    pub session: String,
    pub fingerprint: String,
    pub remote: String,
    pub since: i64,
    /// The guest may become root as the owner can (`admin = true` in the
    /// grant file as it is now). Absent from older daemons: false.
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Guest(SessionInfo),
    /// The caller is in no guest session (an owner's own, or none).
    NotAGuest {
        uid: u32,
    },
    /// A code is on the caller's terminal; send it back with
    /// [`Request::ConfirmLeave`] within `expires_in` seconds.
    Confirm {
        owner: String,
        guest: String,
        expires_in: u64,
    },
    Left {
        owner: String,
        guest: String,
    },
    Reloaded {
        valid: bool,
    },
    /// The portal caller's shares. `managed_by_fleet`: the grant file is
    /// written by vmshare-sync, so answers are given to the fleet's
    /// control plane, not here.
    Shares {
        shares: Vec<Share>,
        managed_by_fleet: bool,
    },
    /// A portal answer applied (or already in effect: `changed` false).
    Answered {
        owner: String,
        guest: String,
        status: crate::grant::model::Status,
        changed: bool,
        notes: Vec<String>,
    },
    Error {
        message: String,
    },
}

/// Encodes one frame.
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    let body = serde_json::to_vec(value).map_err(io::Error::other)?;
    if body.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame too large",
        ));
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks a frame's length prefix.
pub fn frame_len(prefix: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {MAX_FRAME}"),
        ));
    }
    Ok(len)
}

/// Decodes a frame body.
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Decodes a request strictly: an object with `op` and exactly the fields
/// of that op (serde cannot deny unknown fields on unit variants of a
/// tagged enum, so the fields are compared with the request's own).
pub fn decode_request(body: &[u8]) -> io::Result<Request> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let value: serde_json::Value = decode(body)?;
    let Some(fields) = value.as_object() else {
        return Err(invalid("a request is an object with `op`".into()));
    };
    let names = |m: &serde_json::Map<String, serde_json::Value>| {
        m.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<String>>()
    };
    let given = names(fields);
    let request: Request = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
    let own = serde_json::to_value(&request).map_err(|e| invalid(e.to_string()))?;
    match own.as_object() {
        Some(own) if names(own) == given => Ok(request),
        _ => Err(invalid("a request has only its op's fields".into())),
    }
}

/// Sends one request to the daemon and waits for its response.
pub fn call(socket: &Path, request: &Request) -> io::Result<Response> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(&encode(request)?)?;
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix)?;
    let mut body = vec![0u8; frame_len(prefix)?];
    stream.read_exact(&mut body)?;
    decode(&body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = encode(&Request::Leave).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(decode::<Request>(&frame[4..]).unwrap(), Request::Leave);
        assert_eq!(
            std::str::from_utf8(&frame[4..]).unwrap(),
            r#"{"op":"leave"}"#
        );
    }

    #[test]
    fn oversized_and_malformed_frames_are_refused() {
        assert!(frame_len((MAX_FRAME as u32 + 1).to_be_bytes()).is_err());
        assert!(decode_request(b"{\"op\":\"format_disk\"}").is_err());
        assert!(decode_request(b"{\"op\":\"leave\",\"guest\":\"bob\"}").is_err());
        assert!(decode_request(b"\xff\x00").is_err());
        assert!(decode_request(b"[\"leave\"]").is_err());
        assert_eq!(
            decode_request(b"{\"op\":\"whoami\"}").unwrap(),
            Request::Whoami
        );
    }

    #[test]
    fn portal_requests_carry_their_fields_and_nothing_else() {
        let answer = Request::PortalAnswer {
            fingerprint: "SHA256:x".into(),
            owner: "alice".into(),
            answer: Answer::Accept,
        };
        let frame = encode(&answer).unwrap();
        assert_eq!(
            std::str::from_utf8(&frame[4..]).unwrap(),
            r#"{"op":"portal_answer","fingerprint":"SHA256:x","owner":"alice","answer":"accept"}"#
        );
        assert_eq!(decode_request(&frame[4..]).unwrap(), answer);
        for bad in [
            &br#"{"op":"portal_answer","fingerprint":"SHA256:x","owner":"alice","answer":"become_root"}"#[..],
            br#"{"op":"portal_answer","fingerprint":"SHA256:x","owner":"alice"}"#,
            br#"{"op":"portal_list","fingerprint":"SHA256:x","guest":"bob"}"#,
            br#"{"op":"portal_list"}"#,
        ] {
            assert!(decode_request(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn confirm_leave_carries_its_code_and_nothing_else() {
        let confirm = Request::ConfirmLeave {
            code: "1234-5678".into(),
        };
        let frame = encode(&confirm).unwrap();
        assert_eq!(
            std::str::from_utf8(&frame[4..]).unwrap(),
            r#"{"op":"confirm_leave","code":"1234-5678"}"#
        );
        assert_eq!(decode_request(&frame[4..]).unwrap(), confirm);
        for bad in [
            &br#"{"op":"confirm_leave"}"#[..],
            br#"{"op":"confirm_leave","code":1}"#,
            br#"{"op":"confirm_leave","code":"1","guest":"bob"}"#,
            br#"{"op":"leave","code":"1"}"#,
            br#"["confirm_leave","1"]"#,
        ] {
            assert!(
                decode_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
