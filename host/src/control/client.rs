//! The client side: connecting to a host (after checking the root, the socket and the
//! server's peer credentials — nothing is sent to an impostor) and sending requests, each
//! answer parsed as its typed response ([`super::protocol`]).

use super::{ControlError, Request, protocol, socket_path, write_line};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixStream;

/// A connection to a running host.
pub struct ControlClient {
    path: PathBuf,
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl ControlClient {
    /// Connects to the host serving `root`. Before anything is sent, the root must pass
    /// [`crate::trust::check_root`], the socket must be a socket of this user (not a link),
    /// and the process serving it must run as this user (`SO_PEERCRED`).
    pub async fn connect(root: &Path) -> Result<ControlClient, ControlError> {
        use crate::trust::{Kind, TrustError, check, check_root, current_user};
        use std::io::ErrorKind;
        let path = socket_path(root);
        let uid = current_user();
        let refused = |path: PathBuf, source: std::io::Error| match source.kind() {
            ErrorKind::PermissionDenied => ControlError::PermissionDenied { path, uid, source },
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
                ControlError::NotRunning { path, source }
            }
            _ => ControlError::Connection(source),
        };
        check_root(root).map_err(|error| match error {
            TrustError::Inspect { path, source } => refused(path, source),
            error => ControlError::Untrusted(error),
        })?;
        match check(&path, Kind::Socket) {
            Ok(true) => {}
            Ok(false) => {
                return Err(ControlError::NotRunning {
                    path,
                    source: ErrorKind::NotFound.into(),
                });
            }
            Err(TrustError::Inspect { source, .. }) => return Err(refused(path, source)),
            Err(error) => return Err(error.into()),
        }
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| refused(path.clone(), source))?;
        let peer = stream
            .peer_cred()
            .map_err(|source| ControlError::PeerUnknown {
                path: path.clone(),
                source,
            })?;
        if peer.uid() != uid {
            return Err(ControlError::Impostor {
                path,
                pid: peer.pid().unwrap_or(0),
                uid: peer.uid(),
                expected: uid,
            });
        }
        let (reader, writer) = stream.into_split();
        Ok(ControlClient {
            path,
            reader: BufReader::new(reader),
            writer,
        })
    }

    /// The connection ended before the answer: the host died, or (when it still accepts
    /// connections) it closed this one.
    async fn ended(&self, detail: String) -> ControlError {
        if UnixStream::connect(&self.path).await.is_ok() {
            ControlError::Protocol(format!(
                "the host closed the connection before answering ({detail})"
            ))
        } else {
            ControlError::HostDied {
                path: self.path.clone(),
                detail,
            }
        }
    }

    /// Sends a request; `on_progress` sees each progress line; returns the result as `T`,
    /// the request's response type (see [`super::protocol`]; `serde_json::Value` takes
    /// any). A result that does not parse as `T` is [`ControlError::Response`], naming the
    /// command and the field's path.
    pub async fn request<T: DeserializeOwned>(
        &mut self,
        request: &Request,
        on_progress: impl FnMut(&str),
    ) -> Result<T, ControlError> {
        let result = self.request_value(request, on_progress).await?;
        protocol::parse(result).map_err(|source| ControlError::Response {
            command: request.command(),
            source,
        })
    }

    async fn request_value(
        &mut self,
        request: &Request,
        mut on_progress: impl FnMut(&str),
    ) -> Result<Value, ControlError> {
        let value = serde_json::to_value(request).map_err(ControlError::Encode)?;
        if let Err(error) = write_line(&mut self.writer, &value).await {
            return Err(self.ended(format!("sending the request: {error}")).await);
        }
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line).await {
                Ok(0) => return Err(self.ended("closed without an answer".to_owned()).await),
                Ok(_) => {}
                Err(error) => {
                    return Err(self.ended(format!("reading the answer: {error}")).await);
                }
            }
            let response: Value = match serde_json::from_str(&line) {
                Ok(response) => response,
                Err(source) => return Err(ControlError::InvalidLine { line, source }),
            };
            if let Some(message) = response.get("progress").and_then(Value::as_str) {
                on_progress(message);
                continue;
            }
            return match response.get("ok").and_then(Value::as_bool) {
                Some(true) => Ok(response.get("result").cloned().unwrap_or(Value::Null)),
                Some(false) => Err(ControlError::Failed(
                    response
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error")
                        .to_owned(),
                )),
                None => Err(ControlError::Protocol(line)),
            };
        }
    }
}
