# The services `just up` runs and their default health addresses (HERALD_HTTP__ADDR).
# Sourced by the other scripts; keep in step with each crate's main.rs.
HERALD_SERVICES=(
  "subscription-api=127.0.0.1:8080"
  "fanout-router=127.0.0.1:9101"
  "sender-telegram=127.0.0.1:9102"
  "sender-discord=127.0.0.1:9103"
  "sender-xmpp=127.0.0.1:9104"
  "sender-email=127.0.0.1:9105"
  "sender-sms=127.0.0.1:9106"
  "sender-teams=127.0.0.1:9107"
  "sender-websocket=127.0.0.1:9108"
)
