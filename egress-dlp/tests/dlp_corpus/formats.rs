//! Provider formats for the positive half of the corpus: each generator makes a fresh,
//! random, fake value in the provider's documented shape. None is a real credential.
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use super::rng::{self, Rng};

/// What a generator planted: `value` goes into the traffic, `needle` is the part a
/// detector must report (the whole value, or its secret part: a connection string's
/// password, a key's first line of key material).
pub struct Planted {
    pub value: String,
    pub needle: String,
}

fn same(value: String) -> Planted {
    Planted { needle: value.clone(), value }
}

pub struct Format {
    pub family: &'static str,
    pub id: &'static str,
    pub make: fn(&mut Rng) -> Planted,
}

macro_rules! formats {
    ($( $family:literal, $id:literal, |$r:ident| $body:expr; )*) => {
        vec![$( Format { family: $family, id: $id, make: |$r: &mut Rng| -> Planted { $body } } ),*]
    };
}

/// Base64 lines of PEM key material, 64 characters each (70 for OpenSSH keys, whose
/// `lead` is longer), the first starting with `lead`.
fn pem_body(r: &mut Rng, lead: &str, lines: usize) -> Vec<String> {
    let width = if lead.len() > 64 { 70 } else { 64 };
    let mut out = Vec::new();
    let mut first = lead.to_string();
    first.push_str(&r.chars(rng::B64, width - lead.len()));
    out.push(first);
    for _ in 1..lines {
        out.push(r.chars(rng::B64, width));
    }
    let mut last = r.chars_between(rng::B64, 20, 60);
    last.push('=');
    out.push(last);
    out
}

fn pem(r: &mut Rng, label: &str, lead: &str, lines: usize) -> Planted {
    let body = pem_body(r, lead, lines);
    let needle = body[0].clone();
    let value = format!("-----BEGIN {label}-----\n{}\n-----END {label}-----", body.join("\n"));
    Planted { value, needle }
}

fn jwt(r: &mut Rng, alg: &str, sig_len: usize) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
    let payload = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"sub":"{}","iat":{},"exp":{},"scope":"{}"}}"#,
        r.uuid(),
        1_700_000_000 + r.below(50_000_000),
        1_760_000_000 + r.below(50_000_000),
        r.pick(&["read", "read write", "admin", "deploy"]),
    ));
    format!("{header}.{payload}.{}", r.chars(rng::B64URL, sig_len))
}

fn password(r: &mut Rng) -> String {
    // Starts with a letter and mixes classes, like a generated password.
    let mut p = r.chars("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz", 1);
    p.push_str(&r.chars_between(rng::PASSWORD, 14, 26));
    p
}

fn host(r: &mut Rng) -> String {
    format!("{}-{}.{}", r.pick(&["db", "pg", "store", "main", "primary", "cache"]), r.range(1, 9), r.pick(&DOMAINS))
}

const DOMAINS: [&str; 4] =
    ["internal.corp-net.io", "prod.acme-systems.dev", "svc.cluster.local", "eu-west.data-hub.net"];

fn user(r: &mut Rng) -> String {
    r.pick(&["app", "svc_orders", "readonly", "deploy", "admin", "etl", "reporting"]).to_string()
}

pub fn all() -> Vec<Format> {
    formats![
        // Cloud and infrastructure
        "cloud", "aws-access-key-id", |r| same(format!("AKIA{}", r.chars(rng::BASE32, 16)));
        "cloud", "aws-temporary-access-key-id", |r| same(format!("ASIA{}", r.chars(rng::BASE32, 16)));
        "cloud", "gcp-api-key", |r| same(format!("AIza{}", r.chars(rng::B64URL, 35)));
        "cloud", "gcp-oauth-client-secret", |r| same(format!("GOCSPX-{}", r.chars(rng::B64URL, 28)));
        "cloud", "google-oauth-access-token", |r| same(format!("ya29.a0{}", r.chars_between(rng::B64URL, 120, 200)));
        "cloud", "gcp-service-account-key", |r| {
            let key = pem(r, "PRIVATE KEY", "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQ", 12);
            let project = format!("{}-{}", r.pick(&["orbit", "atlas", "nimbus"]), r.digits(6));
            let value = serde_json::to_string_pretty(&serde_json::json!({
                "type": "service_account",
                "project_id": project,
                "private_key_id": r.hex(40),
                "private_key": format!("{}\n", key.value),
                "client_email": format!("runner@{project}.iam.gserviceaccount.com"),
                "client_id": r.digits(21),
            }))
            .unwrap();
            Planted { value, needle: key.needle }
        };
        "cloud", "azure-storage-account-key", |r| {
            let key = format!("{}==", r.chars(rng::B64, 86));
            let value = format!(
                "DefaultEndpointsProtocol=https;AccountName={};AccountKey={key};EndpointSuffix=core.windows.net",
                r.chars("abcdefghijklmnopqrstuvwxyz", 10)
            );
            Planted { value, needle: key }
        };
        "cloud", "azure-ad-client-secret", |r| {
            same(format!("{}{}Q~{}", r.alnum(3), r.digits(1), r.chars("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_~.-", 34)))
        };
        "cloud", "alibaba-access-key-id", |r| same(format!("LTAI{}", r.alnum(20)));
        "cloud", "digitalocean-token", |r| same(format!("{}_v1_{}", r.pick(&["dop", "doo", "dor"]), r.hex(64)));
        "cloud", "heroku-api-key", |r| same(format!("HRKU-AA{}", r.chars(rng::B64URL, 58)));
        "cloud", "flyio-token", |r| same(format!("fm2_{}", r.chars_between(rng::B64, 110, 180)));
        "cloud", "cloudflare-origin-ca-key", |r| same(format!("v1.0-{}-{}", r.hex(24), r.hex(146)));
        "cloud", "vault-token", |r| same(format!("hvs.{}", r.chars(rng::B64URL, 95)));
        "cloud", "terraform-cloud-token", |r| same(format!("{}.atlasv1.{}", r.alnum(14), r.alnum(67)));
        "cloud", "pulumi-token", |r| same(format!("pul-{}", r.hex(40)));
        "cloud", "doppler-token", |r| same(format!("dp.{}.{}", r.pick(&["pt", "st", "sa"]), r.alnum(43)));
        "cloud", "tailscale-key", |r| {
            same(format!("tskey-{}-k{}CNTRL-{}", r.pick(&["auth", "api", "client"]), r.alnum(10), r.alnum(32)))
        };
        "cloud", "supabase-token", |r| same(format!("sbp_{}", r.hex(40)));
        "cloud", "planetscale-token", |r| same(format!("pscale_{}_{}", r.pick(&["tkn", "pw"]), r.chars(rng::B64URL, 43)));
        // Source hosting and CI
        "source", "github-pat", |r| same(format!("ghp_{}", r.alnum(36)));
        "source", "github-oauth", |r| same(format!("gho_{}", r.alnum(36)));
        "source", "github-app-token", |r| same(format!("{}_{}", r.pick(&["ghs", "ghu"]), r.alnum(36)));
        "source", "github-refresh-token", |r| same(format!("ghr_{}", r.alnum(76)));
        "source", "github-fine-grained-pat", |r| same(format!("github_pat_11{}_{}", r.chars(rng::UPPER_ALNUM, 20), r.alnum(59)));
        "source", "gitlab-pat", |r| same(format!("glpat-{}", r.chars(rng::B64URL, 20)));
        "source", "gitlab-runner-token", |r| same(format!("glrt-{}", r.chars(rng::B64URL, 20)));
        "source", "gitlab-deploy-token", |r| same(format!("gldt-{}", r.chars(rng::B64URL, 20)));
        "source", "atlassian-api-token", |r| same(format!("ATATT3xFfGF0{}={}", r.chars(rng::B64URL, 171), r.hex(8).to_uppercase()));
        "source", "bitbucket-app-password", |r| same(format!("ATBB{}", r.alnum(32)));
        "source", "sourcegraph-token", |r| same(format!("sgp_{}_{}", r.hex(16), r.hex(40)));
        "source", "buildkite-token", |r| same(format!("bkua_{}", r.hex(40)));
        // Chat and collaboration
        "chat", "slack-bot-token", |r| same(format!("xoxb-{}-{}-{}", r.digits(12), r.digits(13), r.alnum(24)));
        "chat", "slack-user-token", |r| same(format!("xoxp-{}-{}-{}-{}", r.digits(12), r.digits(12), r.digits(13), r.hex(32)));
        "chat", "slack-app-token", |r| same(format!("xapp-1-A{}-{}-{}", r.chars(rng::UPPER_ALNUM, 10), r.digits(13), r.hex(64)));
        "chat", "slack-webhook", |r| {
            let secret = r.alnum(24);
            let value = format!(
                "https://hooks.slack.com/services/T{}/B{}/{secret}",
                r.chars(rng::UPPER_ALNUM, 10),
                r.chars(rng::UPPER_ALNUM, 10)
            );
            Planted { value, needle: secret }
        };
        "chat", "discord-bot-token", |r| {
            let id = URL_SAFE_NO_PAD.encode(r.digits(18));
            same(format!("{id}.{}.{}", r.chars(rng::B64URL, 6), r.chars(rng::B64URL, 38)))
        };
        "chat", "discord-webhook", |r| {
            let secret = r.chars(rng::B64URL, 68);
            Planted { value: format!("https://discord.com/api/webhooks/{}/{secret}", r.digits(18)), needle: secret }
        };
        "chat", "telegram-bot-token", |r| same(format!("{}:AA{}", r.digits(10), r.chars(rng::B64URL, 33)));
        "chat", "teams-webhook", |r| {
            let secret = r.hex(32);
            let value = format!(
                "https://{}.webhook.office.com/webhookb2/{}@{}/IncomingWebhook/{secret}/{}",
                r.pick(&["contoso", "fabrikam", "northwind"]),
                r.uuid(),
                r.uuid(),
                r.uuid()
            );
            Planted { value, needle: secret }
        };
        "chat", "linear-api-key", |r| same(format!("lin_api_{}", r.alnum(40)));
        "chat", "notion-token", |r| same(format!("ntn_{}{}", r.digits(11), r.alnum(35)));
        "chat", "postman-api-key", |r| same(format!("PMAK-{}-{}", r.hex(24), r.hex(34)));
        "chat", "figma-token", |r| same(format!("figd_{}", r.chars(rng::B64URL, 40)));
        // Payments and commerce
        "payments", "stripe-live-secret-key", |r| same(format!("sk_live_51{}", r.alnum(97)));
        "payments", "stripe-restricted-key", |r| same(format!("rk_live_51{}", r.alnum(97)));
        "payments", "stripe-test-secret-key", |r| same(format!("sk_test_51{}", r.alnum(97)));
        "payments", "stripe-webhook-secret", |r| same(format!("whsec_{}", r.alnum(32)));
        "payments", "square-access-token", |r| same(format!("EAAA{}", r.chars(rng::B64URL, 60)));
        "payments", "square-oauth-secret", |r| same(format!("sq0csp-{}", r.chars(rng::B64URL, 43)));
        "payments", "shopify-token", |r| same(format!("{}_{}", r.pick(&["shpat", "shpca", "shppa", "shpss"]), r.hex(32)));
        "payments", "braintree-token", |r| same(format!("access_token$production${}${}", r.chars("abcdefghijklmnopqrstuvwxyz0123456789", 16), r.hex(32)));
        // Email and messaging
        "messaging", "sendgrid-api-key", |r| same(format!("SG.{}.{}", r.chars(rng::B64URL, 22), r.chars(rng::B64URL, 43)));
        "messaging", "mailgun-api-key", |r| same(format!("key-{}", r.hex(32)));
        "messaging", "mailchimp-api-key", |r| same(format!("{}-us{}", r.hex(32), r.range(1, 21)));
        "messaging", "twilio-api-key", |r| same(format!("SK{}", r.hex(32)));
        // LLM and ML providers
        "llm", "anthropic-api-key", |r| same(format!("sk-ant-api03-{}-{}AA", r.chars(rng::B64URL, 86), r.chars(rng::B64URL, 6)));
        "llm", "anthropic-admin-key", |r| same(format!("sk-ant-admin01-{}-{}AA", r.chars(rng::B64URL, 86), r.chars(rng::B64URL, 6)));
        "llm", "openai-project-key", |r| same(format!("sk-proj-{}", r.chars(rng::B64URL, 156)));
        "llm", "openai-service-account-key", |r| same(format!("sk-svcacct-{}", r.chars(rng::B64URL, 156)));
        "llm", "openai-legacy-key", |r| same(format!("sk-{}T3BlbkFJ{}", r.alnum(20), r.alnum(20)));
        "llm", "huggingface-token", |r| same(format!("hf_{}", r.alnum(34)));
        "llm", "groq-api-key", |r| same(format!("gsk_{}", r.alnum(52)));
        "llm", "xai-api-key", |r| same(format!("xai-{}", r.alnum(80)));
        "llm", "replicate-token", |r| same(format!("r8_{}", r.alnum(37)));
        "llm", "perplexity-api-key", |r| same(format!("pplx-{}", r.alnum(48)));
        "llm", "openrouter-api-key", |r| same(format!("sk-or-v1-{}", r.hex(64)));
        "llm", "langsmith-api-key", |r| same(format!("lsv2_{}_{}_{}", r.pick(&["pt", "sk"]), r.hex(32), r.hex(10)));
        "llm", "pinecone-api-key", |r| same(format!("pcsk_{}_{}", r.alnum(6), r.alnum(63)));
        "llm", "tavily-api-key", |r| same(format!("tvly-{}{}", r.pick(&["", "dev-", "prod-"]), r.alnum(32)));
        "llm", "nvidia-api-key", |r| same(format!("nvapi-{}", r.chars(rng::B64URL, 64)));
        "llm", "deepseek-api-key", |r| same(format!("sk-{}", r.hex(32)));
        "llm", "databricks-token", |r| same(format!("dapi{}", r.hex(32)));
        // No fixed shape: reported, not counted (see SHAPELESS in main.rs)
        "shapeless", "aws-secret-access-key", |r| same(r.chars(rng::B64, 40));
        "shapeless", "azure-openai-key", |r| same(r.hex(32));
        "shapeless", "mistral-api-key", |r| same(r.alnum(32));
        "shapeless", "datadog-api-key", |r| same(r.hex(32));
        // Package registries
        "registries", "npm-token", |r| same(format!("npm_{}", r.alnum(36)));
        "registries", "pypi-token", |r| same(format!("pypi-AgEIcHlwaS5vcmc{}", r.chars_between(rng::B64URL, 120, 180)));
        "registries", "dockerhub-pat", |r| same(format!("dckr_pat_{}", r.chars(rng::B64URL, 27)));
        "registries", "rubygems-api-key", |r| same(format!("rubygems_{}", r.hex(48)));
        "registries", "crates-io-token", |r| same(format!("cio{}", r.alnum(32)));
        "registries", "nuget-api-key", |r| same(format!("oy2{}", r.chars(rng::LOWER_ALNUM, 43)));
        "registries", "artifactory-api-key", |r| same(format!("AKCp{}", r.alnum(69)));
        "registries", "clojars-token", |r| same(format!("CLOJARS_{}", r.chars(rng::LOWER_ALNUM, 60)));
        // Observability
        "observability", "grafana-service-account-token", |r| same(format!("glsa_{}_{}", r.alnum(32), r.hex(8)));
        "observability", "grafana-cloud-token", |r| same(format!("glc_{}", STANDARD.encode(format!(r#"{{"o":"{}","n":"stack-{}","k":"{}","m":{{"r":"prod-eu-west-0"}}}}"#, r.digits(6), r.digits(6), r.alnum(24))).trim_end_matches('=')));
        "observability", "newrelic-api-key", |r| same(format!("NRAK-{}", r.chars(rng::UPPER_ALNUM, 27)));
        "observability", "sentry-token", |r| same(format!("sntryu_{}", r.hex(64)));
        "observability", "dynatrace-token", |r| same(format!("dt0c01.{}.{}", r.chars(rng::UPPER_ALNUM, 24), r.chars(rng::UPPER_ALNUM, 64)));
        // Private keys
        "private-keys", "rsa-private-key", |r| pem(r, "RSA PRIVATE KEY", "MIIEowIBAAKCAQEA", 24);
        "private-keys", "pkcs8-private-key", |r| pem(r, "PRIVATE KEY", "MIIEvgIBADANBgkqhkiG9w0BAQEFAASC", 24);
        "private-keys", "ec-private-key", |r| pem(r, "EC PRIVATE KEY", "MHcCAQEEI", 3);
        "private-keys", "openssh-private-key", |r| pem(r, "OPENSSH PRIVATE KEY", "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW", 6);
        "private-keys", "pgp-private-key", |r| {
            let body = pem_body(r, "lQOYBGV", 14);
            let value = format!("-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{}\n-----END PGP PRIVATE KEY BLOCK-----", body.join("\n"));
            Planted { needle: body[0].clone(), value }
        };
        "private-keys", "age-secret-key", |r| same(format!("AGE-SECRET-KEY-1{}", r.chars("QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L", 58)));
        // JSON web tokens
        "jwt", "jwt-hs256", |r| same(jwt(r, "HS256", 43));
        "jwt", "jwt-rs256", |r| same(jwt(r, "RS256", 342));
        // Connection strings with passwords
        "connection-strings", "postgres-url", |r| {
            let pw = password(r);
            let value = format!("postgresql://{}:{pw}@{}:5432/{}?sslmode=require", user(r), host(r), r.pick(&["orders", "app", "analytics"]));
            Planted { value, needle: pw }
        };
        "connection-strings", "mysql-url", |r| {
            let pw = password(r);
            Planted { value: format!("mysql://{}:{pw}@{}:3306/shop", user(r), host(r)), needle: pw }
        };
        "connection-strings", "mongodb-srv-url", |r| {
            let pw = password(r);
            let value = format!("mongodb+srv://{}:{pw}@cluster0.{}.mongodb.net/?retryWrites=true&w=majority", user(r), r.chars(rng::LOWER_ALNUM, 5));
            Planted { value, needle: pw }
        };
        "connection-strings", "redis-url", |r| {
            let pw = password(r);
            let who = r.pick(&["", "default"]).to_string();
            Planted { value: format!("{}://{who}:{pw}@{}:6379/0", r.pick(&["redis", "rediss"]), host(r)), needle: pw }
        };
        "connection-strings", "amqp-url", |r| {
            let pw = password(r);
            Planted { value: format!("amqps://{}:{pw}@{}/vhost", user(r), host(r)), needle: pw }
        };
        "connection-strings", "sqlserver-connection-string", |r| {
            let pw = password(r);
            let value = format!(
                "Server=tcp:{}.database.windows.net,1433;Initial Catalog={};Persist Security Info=False;User ID={};Password={pw};Encrypt=True;",
                r.chars("abcdefghijklmnopqrstuvwxyz", 8),
                r.pick(&["orders", "crm"]),
                user(r)
            );
            Planted { value, needle: pw }
        };
        // Basic credentials
        "basic-credentials", "http-basic-authorization", |r| {
            let creds = STANDARD.encode(format!("{}:{}", user(r), password(r)));
            Planted { value: format!("Basic {creds}"), needle: creds }
        };
        "basic-credentials", "url-userinfo-password", |r| {
            let pw = password(r);
            let value = format!("https://{}:{pw}@{}/{}", user(r), r.pick(&["git.corp-net.io", "registry.acme-systems.dev", "nexus.data-hub.net"]), r.pick(&["repo.git", "v2/", "simple/"]));
            Planted { value, needle: pw }
        };
    ]
}
