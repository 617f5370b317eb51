//! `GET /ws`: one client's connection. The first frame is `hello` with a token and the
//! addresses to receive for (see [`crate::protocol`]); then messages go out and answers come
//! in until either side closes. WebSocket pings every `heartbeat_secs`; a client silent for
//! three of them is taken for gone.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use herald_jwks::ws_token;
use messaging_core::values::WsKey;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::WebsocketSender;
use crate::hub::ClientAnswer;
use crate::protocol::{ClientFrame, ServerFrame};

pub const PATH: &str = "/ws";
/// The largest frame a client may send (answers are small).
pub const MAX_FRAME: usize = 64 * 1024;
/// Bytes read from a client at a time.
pub const READ_BUFFER: usize = 4 * 1024;
/// Addresses one connection may register.
pub const MAX_ADDRESSES: usize = 1000;

pub fn router(sender: Arc<WebsocketSender>) -> Router {
    Router::new().route(PATH, get(upgrade)).with_state(sender)
}

async fn upgrade(State(sender): State<Arc<WebsocketSender>>, ws: WebSocketUpgrade) -> Response {
    // tungstenite's buffers default to 128 KiB each way per connection: 1.3 GiB resident for
    // 10,000 idle clients (measured). Clients send small answers, and a frame written at
    // once is what the latency wants anyway.
    ws.max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .on_upgrade(move |socket| session(sender, socket))
}

fn text(frame: &ServerFrame) -> Message {
    Message::Text(serde_json::to_string(frame).unwrap_or_default().into())
}

/// Says why, then closes with `code`.
async fn refuse(socket: &mut WebSocket, code: u16, error: &str, message: String) {
    let _ = socket
        .send(text(&ServerFrame::Error {
            code: error.into(),
            message: message.clone(),
        }))
        .await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: error.to_owned().into(),
        })))
        .await;
}

/// A client let in: its tenant, its addresses as shown, their routing keys.
struct Admitted {
    tenant: String,
    shown: Vec<String>,
    keys: Vec<String>,
}

/// Why a hello is refused: the close code, an error code, and the reason.
type Refusal = (u16, &'static str, String);

/// The keys of a hello whose token allows every address; or the close code and why not.
fn admit(secret: &str, token: &str, addresses: &[String]) -> Result<Admitted, Refusal> {
    let claims =
        ws_token::check(secret, token).map_err(|e| (4401, "unauthorized", e.to_string()))?;
    if addresses.is_empty() || addresses.len() > MAX_ADDRESSES {
        return Err((
            4400,
            "bad_hello",
            format!("name 1 to {MAX_ADDRESSES} addresses"),
        ));
    }
    let mut shown = Vec::with_capacity(addresses.len());
    let mut keys = Vec::with_capacity(addresses.len());
    for address in addresses {
        let key = WsKey::parse(address).map_err(|e| (4400, "bad_hello", e.to_string()))?;
        if !claims.allows(key.namespace()) {
            return Err((
                4403,
                "forbidden",
                format!(
                    "the token does not allow the namespace {:?}",
                    key.namespace()
                ),
            ));
        }
        keys.push(crate::routing_key(&claims.tenant, &key));
        shown.push(key.to_string());
    }
    Ok(Admitted {
        tenant: claims.tenant,
        shown,
        keys,
    })
}

async fn session(sender: Arc<WebsocketSender>, mut socket: WebSocket) {
    let settings = &sender.settings;
    let hello = tokio::time::timeout(
        Duration::from_millis(settings.hello_timeout_ms),
        socket.recv(),
    )
    .await;
    let (token, addresses) = match hello {
        Ok(Some(Ok(Message::Text(body)))) => match serde_json::from_str(body.as_str()) {
            Ok(ClientFrame::Hello { token, addresses }) => (token, addresses),
            _ => {
                let why = "the first frame must be hello".to_owned();
                return refuse(&mut socket, 4400, "bad_hello", why).await;
            }
        },
        Err(_) => {
            let why = "no hello in time".to_owned();
            return refuse(&mut socket, 4400, "bad_hello", why).await;
        }
        _ => return,
    };
    let Admitted {
        tenant,
        shown,
        keys,
    } = match admit(settings.token_secret.expose(), &token, &addresses) {
        Ok(admitted) => admitted,
        Err((code, error, why)) => {
            tracing::info!(%error, %why, "refused a WebSocket client");
            return refuse(&mut socket, code, error, why).await;
        }
    };
    let (frames, mut outbound) = mpsc::channel(settings.queue_per_connection.max(1));
    let too_slow = CancellationToken::new();
    let (id, new_keys) = sender.hub.register(keys, frames, too_slow.clone());
    // Bound before `ready`: a message published after the client saw `ready` finds it.
    for key in new_keys {
        sender.bind(key).await;
    }
    tracing::info!(%tenant, connection = id, addresses = shown.len(), "a WebSocket client connected");
    let heartbeat = Duration::from_secs(settings.heartbeat_secs.max(1));
    let ready = ServerFrame::Ready {
        addresses: shown,
        heartbeat_secs: heartbeat.as_secs(),
    };
    let (mut sink, mut stream) = socket.split();
    if sink.send(text(&ready)).await.is_ok() {
        let mut ticks = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                _ = sender.shutdown.cancelled() => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: 1001, reason: "shutting down".into() }))).await;
                    break;
                }
                _ = too_slow.cancelled() => {
                    let _ = sink.send(text(&ServerFrame::Error { code: "too_slow".into(), message: "messages were not read in time; reconnect".into() })).await;
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: 4408, reason: "too slow".into() }))).await;
                    break;
                }
                frame = outbound.recv() => match frame {
                    Some(frame) => if sink.send(text(&frame)).await.is_err() { break },
                    None => break,
                },
                incoming = stream.next() => match incoming {
                    Some(Ok(Message::Text(body))) => {
                        last_heard = Instant::now();
                        match serde_json::from_str::<ClientFrame>(body.as_str()) {
                            Ok(ClientFrame::Ack { delivery_id }) => sender.hub.answer(delivery_id, id, ClientAnswer::Ack),
                            Ok(ClientFrame::Refuse { delivery_id, class, reason }) => {
                                sender.hub.answer(delivery_id, id, ClientAnswer::Refuse { class, reason });
                            }
                            Ok(ClientFrame::Hello { .. }) | Err(_) => {
                                let _ = sink.send(text(&ServerFrame::Error { code: "bad_frame".into(), message: "expected ack or refuse".into() })).await;
                                let _ = sink.send(Message::Close(Some(CloseFrame { code: 4400, reason: "bad frame".into() }))).await;
                                break;
                            }
                        }
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => last_heard = Instant::now(),
                    Some(Ok(Message::Binary(_))) => {
                        let _ = sink.send(Message::Close(Some(CloseFrame { code: 4400, reason: "text frames only".into() }))).await;
                        break;
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                },
                _ = ticks.tick() => {
                    if last_heard.elapsed() > heartbeat * 3 {
                        tracing::info!(connection = id, "a WebSocket client went silent; closing it");
                        break;
                    }
                    if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    for key in sender.hub.remove(id) {
        sender.unbind(key).await;
    }
    tracing::info!(connection = id, "a WebSocket client disconnected");
}
