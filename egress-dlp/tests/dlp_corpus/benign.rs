//! The benign half of the corpus: token-shaped text that is not a credential, as an agent
//! sends it (mostly pasted into LLM conversations). A detector that flags these costs the
//! user a blocked request for nothing.
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;

use super::contexts::{PROSE, anthropic_body, json_post, post};
use super::rng::{self, Rng};

pub struct Category {
    pub id: &'static str,
    pub count: usize,
    pub make: fn(&mut Rng) -> String,
}

pub fn all() -> Vec<Category> {
    vec![
        Category { id: "git-shas", count: 25, make: git_shas },
        Category { id: "uuids", count: 20, make: uuids },
        Category { id: "lockfile-hashes", count: 30, make: lockfiles },
        Category { id: "base64-images", count: 25, make: images },
        Category { id: "docs-placeholders", count: 25, make: placeholders },
        Category { id: "hex-digests", count: 20, make: digests },
        Category { id: "random-ids", count: 30, make: ids },
        Category { id: "minified-js", count: 20, make: minified_js },
        Category { id: "source-code", count: 20, make: source_code },
        Category { id: "public-keys", count: 20, make: public_keys },
        Category { id: "prose-about-credentials", count: 20, make: prose },
        Category { id: "random-blobs", count: 20, make: blobs },
    ]
}

fn chat(r: &mut Rng, pasted: &str) -> String {
    let content = format!("{}\n\n```\n{pasted}\n```", r.pick(PROSE));
    json_post("api.anthropic.com", "/v1/messages", &anthropic_body(r, &content))
}

fn lines(r: &mut Rng, n: usize, f: impl Fn(&mut Rng) -> String) -> String {
    (0..n).map(|_| f(r)).collect::<Vec<_>>().join("\n")
}

const WORDS: &[&str] = &[
    "fix", "parser", "handle", "empty", "input", "refactor", "config", "loader", "add", "tests", "for", "retry",
    "logic", "bump", "deps", "update", "docs", "cache", "layer", "remove", "dead", "code", "rename", "module",
];

fn sentence(r: &mut Rng, n: usize) -> String {
    (0..n).map(|_| *r.pick(WORDS)).collect::<Vec<_>>().join(" ")
}

fn git_shas(r: &mut Rng) -> String {
    let log = match r.below(3) {
        0 => lines(r, 6, |r| {
            format!(
                "commit {}\nAuthor: Dev {} <dev{}@example.test>\nDate:   Mon Nov {} 10:{}:00 2026 +0000\n\n    {}\n",
                r.hex(40),
                r.range(1, 9),
                r.range(1, 9),
                r.range(10, 28),
                r.range(10, 59),
                sentence(r, 5)
            )
        }),
        1 => lines(r, 12, |r| format!("{} {}", r.hex(7), sentence(r, 4))),
        _ => format!(
            "Merge: {} {}\n{}\n{}..{}  main -> origin/main\n{}",
            r.hex(7),
            r.hex(7),
            lines(r, 5, |r| format!("{}\trefs/heads/feature-{}", r.hex(40), r.range(1, 99))),
            r.hex(12),
            r.hex(12),
            lines(r, 4, |r| format!("pick {} {}", r.hex(40), sentence(r, 3)))
        ),
    };
    chat(r, &log)
}

fn uuids(r: &mut Rng) -> String {
    let items: Vec<serde_json::Value> = (0..r.range(3, 8))
        .map(|_| json!({"id": r.uuid(), "org_id": r.uuid(), "request_id": r.uuid(), "name": sentence(r, 2)}))
        .collect();
    if r.below(2) == 0 {
        json_post("api.acme-systems.dev", "/v1/batch", &json!({"items": items}))
    } else {
        chat(r, &serde_json::to_string_pretty(&items).unwrap())
    }
}

fn sri(r: &mut Rng) -> String {
    format!("sha512-{}==", r.chars(rng::B64, 86))
}

fn lockfiles(r: &mut Rng) -> String {
    let name = |r: &mut Rng| format!("{}-{}", r.pick(&["left", "is", "fast", "tiny", "deep"]), r.pick(WORDS));
    let text = match r.below(6) {
        0 => lines(r, 6, |r| {
            let n = name(r);
            format!(
                "    \"node_modules/{n}\": {{\n      \"version\": \"1.{}.0\",\n      \"resolved\": \"https://registry.npmjs.org/{n}/-/{n}-1.0.0.tgz\",\n      \"integrity\": \"{}\"\n    }},",
                r.range(0, 20),
                sri(r)
            )
        }),
        1 => lines(r, 6, |r| {
            format!(
                "[[package]]\nname = \"{}\"\nversion = \"0.{}.3\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"{}\"\n",
                name(r),
                r.range(1, 30),
                r.hex(64)
            )
        }),
        2 => {
            lines(r, 8, |r| format!("github.com/acme/{} v1.{}.0 h1:{}=", name(r), r.range(0, 9), r.chars(rng::B64, 43)))
        }
        3 => lines(r, 5, |r| {
            format!(
                "\"{}@^2.0.0\":\n  version \"2.1.0\"\n  resolved \"https://registry.yarnpkg.com/x/-/x-2.1.0.tgz#{}\"\n  integrity {}\n",
                name(r),
                r.hex(40),
                sri(r)
            )
        }),
        4 => lines(r, 6, |r| format!("{}==2.{}.1 \\\n    --hash=sha256:{}", name(r), r.range(0, 9), r.hex(64))),
        _ => {
            lines(r, 6, |r| format!("  /{}@3.0.{}:\n    resolution: {{integrity: {}}}", name(r), r.range(0, 9), sri(r)))
        }
    };
    chat(r, &text)
}

/// Bytes of a plausible image: a real header, then compressed-looking data with the
/// zero runs and repeated rows that real images have.
fn image_bytes(r: &mut Rng, size: usize) -> (Vec<u8>, &'static str) {
    let (mut out, media) = if r.below(2) == 0 {
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x02\x00\x00\x00\x01\x80\x08\x06\x00\x00\x00".to_vec(),
            "image/png",
        )
    } else {
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00".to_vec(), "image/jpeg")
    };
    while out.len() < size {
        match r.below(4) {
            0 => out.extend(std::iter::repeat_n(0u8, r.range(4, 64))),
            1 => {
                let row = r.bytes_between(3, 12);
                for _ in 0..r.range(2, 20) {
                    out.extend(&row);
                }
            }
            _ => out.extend(r.bytes_between(16, 256)),
        }
    }
    out.truncate(size);
    (out, media)
}

fn images(r: &mut Rng) -> String {
    let size = *r.pick(&[2_000, 8_000, 30_000, 60_000, 90_000]);
    let (bytes, media) = image_bytes(r, size);
    let data = STANDARD.encode(bytes);
    let body = if r.below(2) == 0 {
        json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}},
            {"type": "text", "text": "What is in this screenshot?"},
        ]}]})
    } else {
        json!({"model": "gpt-5", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe the chart."},
            {"type": "image_url", "image_url": {"url": format!("data:{media};base64,{data}")}},
        ]}]})
    };
    json_post("api.anthropic.com", "/v1/messages", &body)
}

/// Values published in provider documentation and tutorials as examples.
const PLACEHOLDERS: &[&str] = &[
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "export AWS_ACCESS_KEY_ID=AKIAI44QH8DHBEXAMPLE",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "OPENAI_API_KEY=sk-...",
    "ANTHROPIC_API_KEY=sk-ant-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "stripe.api_key = \"sk_test_4eC39HqLyjWDarjtT1zdp7dc\"",
    "SLACK_BOT_TOKEN=xoxb-your-bot-token",
    "HF_TOKEN=hf_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "DATABASE_URL=postgres://user:password@localhost:5432/mydb",
    "DATABASE_URL=postgresql://USER:PASSWORD@HOST:PORT/DATABASE",
    "REDIS_URL=redis://:${REDIS_PASSWORD}@redis:6379/0",
    "MONGO_URI=mongodb+srv://<username>:<password>@cluster0.example.mongodb.net/",
    "git clone https://username:token@github.com/org/repo.git",
    "curl -u user:pass https://api.example.com/",
    "npm config set //registry.npmjs.org/:_authToken=${NPM_TOKEN}",
    "GOOGLE_API_KEY=AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
    "glpat-xxxxxxxxxxxxxxxxxxxx",
    "Authorization: Basic <base64(username:password)>",
    "Authorization: Bearer YOUR_API_KEY",
    "NPM_TOKEN=npm_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    "-----BEGIN RSA PRIVATE KEY-----\n...\n-----END RSA PRIVATE KEY-----",
    "SENDGRID_API_KEY=SG.xxxxxxxxxxxxxxxxxxxxxx.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    "password: ********",
    "Server=myServerAddress;Database=myDataBase;User Id=myUsername;Password=myPassword;",
];

/// Two snippets from `list` pasted into a conversation.
fn two_of(r: &mut Rng, list: &[&str]) -> String {
    let a = *r.pick(list);
    let b = *r.pick(list);
    chat(r, &format!("{a}\n\n{b}"))
}

fn placeholders(r: &mut Rng) -> String {
    two_of(r, PLACEHOLDERS)
}

fn digests(r: &mut Rng) -> String {
    let text = match r.below(5) {
        0 => lines(r, 8, |r| format!("{}  dist/{}-{}.tar.gz", r.hex(64), r.pick(WORDS), r.range(1, 9))),
        1 => lines(r, 8, |r| format!("MD5 ({}.bin) = {}", r.pick(WORDS), r.hex(32))),
        2 => lines(r, 6, |r| {
            format!("ghcr.io/acme/{}   latest   {}   2 days ago   {}MB", r.pick(WORDS), r.hex(12), r.range(20, 900))
        }),
        3 => lines(r, 6, |r| format!("\"ETag\": \"\\\"{}\\\"\", \"digest\": \"sha256:{}\"", r.hex(32), r.hex(64))),
        _ => lines(r, 6, |r| format!("SHA1({}) = {}", r.pick(WORDS), r.hex(40))),
    };
    chat(r, &text)
}

fn ids(r: &mut Rng) -> String {
    let text = match r.below(6) {
        0 => lines(r, 8, |r| format!("{} {}", r.chars("0123456789ABCDEFGHJKMNPQRSTVWXYZ", 26), sentence(r, 2))),
        1 => serde_json::to_string_pretty(&json!({
            "id": format!("msg_01{}", r.alnum(22)),
            "type": "message",
            "content": [{"type": "tool_use", "id": format!("toolu_01{}", r.alnum(22)), "name": "bash", "input": {"cmd": "ls"}}],
            "usage": {"input_tokens": r.range(100, 9000), "output_tokens": r.range(10, 900)},
        }))
        .unwrap(),
        2 => serde_json::to_string_pretty(&json!({
            "id": format!("chatcmpl-{}", r.alnum(29)),
            "system_fingerprint": format!("fp_{}", r.hex(10)),
            "file_id": format!("file-{}", r.alnum(22)),
            "customer": format!("cus_{}", r.alnum(14)),
            "payment_intent": format!("pi_3{}", r.alnum(23)),
            "charge": format!("ch_3{}", r.alnum(23)),
            "event": format!("evt_1{}", r.alnum(23)),
        }))
        .unwrap(),
        3 => lines(r, 8, |r| {
            format!(
                "{}-{}-{}   1/1   Running   0   {}h",
                r.pick(&["web", "worker", "api-gateway"]),
                r.chars("bcdfghjklmnpqrstvwxz2456789", 10),
                r.chars("bcdfghjklmnpqrstvwxz2456789", 5),
                r.range(1, 99)
            )
        }),
        4 => lines(r, 6, |r| {
            format!(
                "traceparent: 00-{}-{}-01\nX-Amzn-Trace-Id: Root=1-{}-{}\nx-request-id: {}",
                r.hex(32),
                r.hex(16),
                r.hex(8),
                r.hex(24),
                r.chars(rng::B64URL, 21)
            )
        }),
        _ => lines(r, 8, |r| format!("{} {} {}", r.digits(19), r.chars(rng::B64URL, 11), r.chars(rng::B64URL, 21))),
    };
    chat(r, &text)
}

fn ident(r: &mut Rng) -> String {
    let n = r.range(1, 3);
    (0..n).map(|_| *r.pick(&["e", "t", "n", "r", "o", "i", "a", "s", "u", "c", "l", "f", "d", "p"])).collect()
}

fn minified_js(r: &mut Rng) -> String {
    let mut js = String::from(
        "!function(e,t){\"object\"==typeof exports&&\"undefined\"!=typeof module?module.exports=t():\"function\"==typeof define&&define.amd?define(t):(e=\"undefined\"!=typeof globalThis?globalThis:e||self).Lib=t()}(this,function(){\"use strict\";",
    );
    for _ in 0..r.range(30, 80) {
        let (a, b, c) = (ident(r), ident(r), ident(r));
        let piece = match r.below(6) {
            0 => format!(
                "var {a}=function({b},{c}){{return {b}.prototype.hasOwnProperty.call({c},\"{}\")}};",
                r.pick(WORDS)
            ),
            1 => format!(
                "{a}.exports={{{}:\"{}\",{}:\"{}\"}};",
                r.range(100, 999),
                r.hex(20),
                r.range(100, 999),
                r.hex(8)
            ),
            2 => format!(
                "const {a}=\"#{}\",{b}=[{},{},{}];",
                r.hex(6),
                r.range(0, 255),
                r.range(0, 255),
                r.range(0, 255)
            ),
            3 => format!(
                "function {a}({b}){{if(!{b})throw new TypeError(\"{}\");return {b}.{}({c})}}",
                sentence(r, 3),
                r.pick(&["map", "filter", "reduce", "forEach"])
            ),
            4 => format!(
                "{a}.n({b},{{default:function(){{return {c}}}}});window.__chunk_{}=\"{}\";",
                r.range(1, 999),
                r.chars(rng::B64URL, 20)
            ),
            _ => format!(
                "Object.defineProperty({a},\"__esModule\",{{value:!0}}),{a}.version=\"{}.{}.{}\";",
                r.range(0, 9),
                r.range(0, 30),
                r.range(0, 30)
            ),
        };
        js.push_str(&piece);
    }
    js.push_str("});\n//# sourceMappingURL=data:application/json;charset=utf-8;base64,");
    let map = json!({"version": 3, "file": "bundle.min.js", "sources": ["src/index.ts"], "mappings": r.chars("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz+/;,", 400)});
    js.push_str(&STANDARD.encode(map.to_string()));
    if r.below(2) == 0 {
        post("cdn-upload.acme-systems.dev", "/assets/bundle.min.js", "application/javascript", &js)
    } else {
        chat(r, &js)
    }
}

const SOURCE: &[&str] = &[
    "const TOKEN_PATTERN = /ghp_[A-Za-z0-9]{36}/;\nexport function looksLikeToken(s: string): boolean {\n  return TOKEN_PATTERN.test(s);\n}",
    "fn redact(line: &str) -> String {\n    let re = Regex::new(r\"(sk|rk)_live_[A-Za-z0-9]{24,}\").unwrap();\n    re.replace_all(line, \"[redacted]\").into_owned()\n}",
    "NotificationServiceWorker.config.registerServiceWorkerHandlersForAllClients(registration);",
    "MessageChannelPortAdapter.listen.onMessageReceivedFromParentFrameWithOrigin(event);",
    "class OAuthClientCredentialsProvider(CredentialsProvider):\n    def fetch_access_token(self) -> str:\n        return self._session.post(self.token_url, data=self._form()).json()[\"access_token\"]",
    "api_key = os.environ[\"OPENAI_API_KEY\"]\nclient = OpenAI(api_key=api_key)",
    "let password = std::env::var(\"DB_PASSWORD\")?;\nlet url = format!(\"postgres://{user}:{password}@{host}/{db}\");",
    "if (header.startsWith('Basic ')) {\n  const [user, pass] = atob(header.slice(6)).split(':');\n}",
    "assert_eq!(mask(\"AKIA\"), \"AKIA****\");\nassert!(is_key_prefix(\"sk-ant-\"));",
    "private static final String SECRET_HEADER = \"X-Hub-Signature-256\";\nString sig = \"sha256=\" + Hex.encodeHexString(mac.doFinal(body));",
    "MODULE_NOT_FOUND_ERROR_CODE.reason.ExtensionHostProcessManagerImplementation",
    "keyBy(users, 'id'); keyof typeof config; key-value store; monkey-patch the key-chain helper",
    "SELECT id, created_at FROM sessions WHERE token_hash = $1 AND expires_at > now();",
    "docker run -e DATABASE_URL=\"$DATABASE_URL\" -e REDIS_URL=\"redis://redis:6379/0\" app:latest",
    "headers = {\"Authorization\": f\"Bearer {os.environ['API_TOKEN']}\", \"Content-Type\": \"application/json\"}",
];

fn source_code(r: &mut Rng) -> String {
    two_of(r, SOURCE)
}

fn public_keys(r: &mut Rng) -> String {
    let text = match r.below(5) {
        0 => format!(
            "-----BEGIN CERTIFICATE-----\nMIIDdzCCAl+gAwIBAgIE{}\n{}\n-----END CERTIFICATE-----",
            r.chars(rng::B64, 44),
            lines(r, 18, |r| r.chars(rng::B64, 64))
        ),
        1 => format!(
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA{}\n{}\nIDAQAB\n-----END PUBLIC KEY-----",
            r.chars(rng::B64, 20),
            lines(r, 6, |r| r.chars(rng::B64, 64))
        ),
        2 => lines(r, 4, |r| {
            format!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{} dev{}@laptop", r.chars(rng::B64, 43), r.range(1, 9))
        }),
        3 => lines(r, 3, |r| format!("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQ{} ci@build", r.chars(rng::B64, 500))),
        _ => format!(
            "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBG{}\n{}\n-----END PGP PUBLIC KEY BLOCK-----",
            r.chars(rng::B64, 58),
            lines(r, 12, |r| r.chars(rng::B64, 64))
        ),
    };
    chat(r, &text)
}

const PROSE_ABOUT: &[&str] = &[
    "Rotate the GitHub token (it starts with ghp_) every 90 days and never commit it.",
    "Stripe live keys begin with sk_live_ and test keys with sk_test_; keep both out of the repo.",
    "Basic authentication sends base64(user:password), which is not encryption.",
    "Use a connection string like postgres://localhost/app for local development.",
    "The cache is redis://cache:6379/0 and the queue is amqp://rabbitmq:5672/.",
    "Our key-value store keeps key-value pairs in memory and flushes every 5 seconds.",
    "Private keys (-----BEGIN ... PRIVATE KEY-----) belong in the vault, not in chat.",
    "A JWT has three parts: header, payload and signature, separated by dots.",
    "Bearer tokens go in the Authorization header; the gateway adds ours.",
    "AWS access key ids start with AKIA for long-lived keys and ASIA for temporary ones.",
    "Set the password in the environment; the app reads DB_PASSWORD at startup.",
    "Slack bot tokens look like xoxb-... and user tokens like xoxp-....",
];

fn prose(r: &mut Rng) -> String {
    let text: Vec<&str> = (0..r.range(2, 5)).map(|_| *r.pick(PROSE_ABOUT)).collect();
    let content = text.join(" ");
    if r.below(3) == 0 {
        let body = format!("comment={}", super::contexts::form_encode(&content));
        post("forms.data-hub.net", "/submit", "application/x-www-form-urlencoded", &body)
    } else {
        json_post("api.anthropic.com", "/v1/messages", &anthropic_body(r, &content))
    }
}

/// Encrypted payloads and signatures: random base64 and hex, the text most likely to
/// contain a token-shaped run by chance.
fn blobs(r: &mut Rng) -> String {
    let size = *r.pick(&[512, 2_048, 8_192, 16_384]);
    let body = json!({
        "alg": "A256GCM",
        "iv": r.hex(24),
        "ciphertext": STANDARD.encode(r.bytes(size)),
        "tag": STANDARD.encode(r.bytes(16)),
        "signature": r.hex(128),
        "nonce": URL_SAFE_NO_PAD.encode(r.bytes(32)),
    });
    if r.below(2) == 0 {
        json_post("vault-proxy.acme-systems.dev", "/v1/envelopes", &body)
    } else {
        chat(r, &serde_json::to_string_pretty(&body).unwrap())
    }
}
