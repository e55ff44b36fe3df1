//! `GET /ws?token=…` (docs/PROTOCOL.md §2.2, §3): only a valid HS256 token of the
//! registry's secret upgrades; everything else is 401 with an empty body and
//! no upgrade.

use chatixia_e2e::jwt::{self, HS256};
use chatixia_e2e::ws::WsClient;
use chatixia_e2e::{Registry, Scratch, TEST_SECRET, block_on};
use serde_json::{Value, json};

const SECRET: &[u8] = TEST_SECRET.as_bytes();

fn hs256(claims: Value) -> String {
    jwt::sign_hs256(SECRET, HS256, &claims)
}

#[test]
fn bad_tokens_are_refused_with_401_and_no_upgrade() {
    let dir = Scratch::new("wsauth-bad");
    let reg = Registry::start_with_secret(dir.path());
    let now = jwt::now_unix();
    let ok = jwt::claims("alpha", "agent", now);
    let without = |field: &str| {
        let mut c = ok.clone();
        c.as_object_mut().unwrap().remove(field);
        c
    };
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "not-a-jwt".into()),
        ("three garbage parts", "aaa.bbb.ccc".into()),
        ("other secret", jwt::sign_hs256(b"another-secret-of-32-bytes-long!", HS256, &ok)),
        // exp 61 s in the past and more: beyond the 60 s leeway.
        ("expired", hs256(json!({"sub":"alpha","role":"agent","iat":now - 700,"exp":now - 400}))),
        ("expired just past leeway", hs256(json!({"sub":"alpha","role":"agent","iat":now - 370,"exp":now - 70}))),
        ("alg none", jwt::unsigned(&ok)),
        ("alg none with a valid signature", {
            let signed = hs256(ok.clone());
            let sig = signed.rsplit('.').next().unwrap().to_owned();
            format!("{}{sig}", jwt::unsigned(&ok))
        }),
        ("HS384", jwt::sign_hs384(SECRET, &ok)),
        ("HS256 header with a broken signature", {
            let mut t = hs256(ok.clone());
            let last = t.pop().unwrap();
            t.push(if last == 'A' { 'B' } else { 'A' });
            t
        }),
        ("no sub", hs256(without("sub"))),
        ("empty sub", hs256(json!({"sub":"","role":"agent","iat":now,"exp":now + 300}))),
        ("no role", hs256(without("role"))),
        ("no iat", hs256(without("iat"))),
        ("no exp", hs256(without("exp"))),
        ("aud", hs256(json!({"sub":"alpha","role":"agent","iat":now,"exp":now + 300,"aud":"chatixia"}))),
        ("signed claims with a swapped sub", {
            // A genuine token's signature on other claims.
            let genuine = hs256(ok.clone());
            let sig = genuine.rsplit('.').next().unwrap().to_owned();
            let forged = jwt::claims("bravo", "agent", now);
            format!("{}.{}.{sig}", jwt::b64url(HS256), jwt::b64url(forged.to_string()))
        }),
    ];
    block_on(async {
        for (what, token) in &cases {
            let (status, body) = WsClient::refused(&reg.ws_url(token)).await;
            assert_eq!(status, 401, "{what}");
            assert!(body.is_empty(), "{what}: body {:?}", String::from_utf8_lossy(&body));
        }
        let url = format!("ws://127.0.0.1:{}/ws", reg.port);
        for (what, url) in [
            ("no token", url.clone()),
            ("empty token", format!("{url}?token=")),
            ("other param", format!("{url}?tok=x")),
        ] {
            let (status, body) = WsClient::refused(&url).await;
            assert_eq!((status, body.len()), (401, 0), "{what}");
        }
        // A good token on a request that is no upgrade: 400, not a 101.
        let plain = reg.get(&format!("/ws?token={}", hs256(ok.clone())));
        assert_eq!(plain.status, 400, "{plain:?}");
        // Nobody got in.
        let metrics = reg.get("/metrics").body;
        assert!(metrics.contains("\nchatixia_ws_connections 0\n"), "{metrics}");
        let refused = format!("\nchatixia_ws_refused_total {}\n", cases.len() + 3);
        assert!(metrics.contains(&refused), "expected {refused:?} in\n{metrics}");
    });
}

/// The controls of the test above: tokens forged the same way but valid are
/// accepted, so the refusals are not an artefact of the forging.
#[test]
fn foreign_hs256_tokens_with_the_same_secret_are_accepted() {
    let dir = Scratch::new("wsauth-good");
    let reg = Registry::start_with_secret(dir.path());
    let now = jwt::now_unix();
    block_on(async {
        // Issued by another implementation: other header key order, extra
        // claims are fine as long as none is `aud`.
        let foreign = jwt::sign_hs256(
            SECRET,
            r#"{"typ":"JWT","alg":"HS256"}"#,
            &json!({"sub":"alpha","role":"agent","iat":now,"exp":now + 300,"jti":"x1"}),
        );
        let mut a = WsClient::connect(&reg.ws_url(&foreign), "alpha").await.expect("foreign token");
        // Expired, but within the 60 s leeway.
        let late =
            jwt::sign_hs256(SECRET, HS256, &json!({"sub":"bravo","role":"agent","iat":now - 340,"exp":now - 40}));
        let mut b = WsClient::connect(&reg.ws_url(&late), "bravo").await.expect("token within leeway");
        assert_eq!(a.register().await, ["bravo"]);
        assert_eq!(b.register().await, ["alpha"]);
        // The other direction: what the registry mints is a plain HS256
        // token of the same secret.
        let minted = reg.token("key-charlie");
        assert!(jwt::verify_hs256(SECRET, &minted), "{minted}");
        assert!(!jwt::verify_hs256(b"another-secret-of-32-bytes-long!", &minted));
    });
}
