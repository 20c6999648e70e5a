//! Request bodies for the DLP benchmarks: clean LLM-conversation JSON.

/// A clean conversation body of about `size` bytes: many turns of prose and code.
pub fn conversation(size: usize) -> String {
    let turn = "{\"role\":\"user\",\"content\":\"Please refactor the function below so it handles errors with anyhow, \
                keeps the public signature, and adds a unit test.\\n```rust\\nfn parse(input: &str) -> Result<Config, Error> \
                {\\n    let value: Value = serde_json::from_str(input)?;\\n    Ok(Config::from(value))\\n}\\n```\"},\
                {\"role\":\"assistant\",\"content\":\"Here is the refactored version with context on every error and a test \
                that feeds it an empty object. The commit id is 3f9a1c7e5b2d8f0a4c6e9b1d3f5a7c9e2b4d6f8a.\"},";
    turns(turn, size)
}

/// A clean conversation of about `size` bytes in which an agent and its user discuss
/// logins, URLs, connection strings and keys without showing any: the keywords of many
/// rules occur in every turn, so the prefilter lets their regexes run.
pub fn auth_talk(size: usize) -> String {
    let turn = "{\"role\":\"user\",\"content\":\"Our login uses Basic auth over https://api.example.test/v1/login and the \
                password field comes from the config; the Bearer header is set by the gateway. Check ssl.conf, url.parse \
                and the task-runner (its live_reload flag), then the precious_cache and the api-key-header docs.\"},\
                {\"role\":\"assistant\",\"content\":\"```python\\nimport requests\\nsession = requests.Session()\\n\
                resp = session.post('https://auth.example.test/token', data={'grant_type': 'client_credentials'})\\n\
                print(resp.status_code)\\n```\\nThe connection string is Server=db;Database=app;User Id=app;Password=<from vault>; \
                and the WireGuard config says PrivateKey = <from vault>. See postgres://app@db/app and \
                redis://cache:6379 for the other services; the token is read with os.environ['API_TOKEN'].\"},";
    turns(turn, size)
}

fn turns(turn: &str, size: usize) -> String {
    let mut body = String::with_capacity(size + turn.len());
    body.push_str("{\"model\":\"m\",\"messages\":[");
    while body.len() < size {
        body.push_str(turn);
    }
    body.push_str("{\"role\":\"user\",\"content\":\"thanks\"}]}");
    body
}
