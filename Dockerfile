# rwproxy: a plain multi-stage build. The image holds `rwproxy` and the demo web app
# `rwproxy-demo-web` (used by docker-compose.yml's web servers).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN useradd --system --no-create-home rwproxy
COPY --from=build /src/target/release/rwproxy /src/target/release/rwproxy-demo-web /usr/local/bin/
USER rwproxy
# SQL, HTTP balancer, admin (/metrics, /status, /).
EXPOSE 6033 8080 9090
ENTRYPOINT ["rwproxy"]
CMD ["--config", "/etc/rwproxy/rwproxy.toml"]
