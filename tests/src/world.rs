//! A bottle behind a running gateway with one HTTPS upstream (its own CA) serving every
//! test host on 127.0.0.2, and clients that trust the gateway's CA.
use std::process::Output;

use crate::{
    EnvSpec, MoreBottle, TestEnv,
    https::{HttpsUpstream, TestCa, make_git_repo},
    stdout,
};

/// What a `World` is made of; `Default` for everything not given.
#[derive(Default, Clone, Copy)]
pub struct WorldSpec<'a> {
    /// Names served by the upstream, all on 127.0.0.2.
    pub hosts: &'a [&'a str],
    /// The first bottle's routes file.
    pub routes: &'a str,
    /// The gateway's own environment.
    pub gateway_env: &'a [(&'a str, &'a str)],
    /// Extra lines in the first bottle's entry (indented by four spaces).
    pub bottle: &'a str,
    /// Extra top-level gateway.yaml lines.
    pub config: &'a str,
    /// Files written next to gateway.yaml before the gateway starts.
    pub files: &'a [(&'a str, &'a str)],
    /// The same, mode 0600 (credentials files).
    pub private_files: &'a [(&'a str, &'a str)],
    /// The first bottle gets `netns: new` (the others say so in `more_bottles`).
    pub netns: bool,
    /// More bottles in the gateway.
    pub more_bottles: &'a [MoreBottle<'a>],
    /// The only nameserver the gateway's resolver sees (`EnvSpec::gateway_nameserver`).
    pub gateway_nameserver: Option<&'a str>,
}

pub struct World {
    pub env: TestEnv,
    pub up: HttpsUpstream,
    trust: Vec<(String, String)>,
}

impl World {
    /// `hosts` all resolve to 127.0.0.2, where the upstream serves them (and git
    /// repositories under `/git/`); `gateway_env` is the gateway's own environment.
    pub fn start(test: &str, hosts: &[&str], routes: &str, gateway_env: &[(&str, &str)]) -> World {
        Self::start_with(test, hosts, routes, gateway_env, "")
    }

    /// As `start`, with extra lines in the bottle's entry (indented by four spaces).
    pub fn start_with(test: &str, hosts: &[&str], routes: &str, gateway_env: &[(&str, &str)], bottle: &str) -> World {
        Self::start_full(test, hosts, routes, gateway_env, bottle, "", &[])
    }

    /// As `start_with`, plus extra top-level gateway.yaml lines and files written next to
    /// it (name, contents) before the gateway starts.
    pub fn start_full(
        test: &str,
        hosts: &[&str],
        routes: &str,
        gateway_env: &[(&str, &str)],
        bottle: &str,
        config: &str,
        files: &[(&str, &str)],
    ) -> World {
        let spec = WorldSpec { hosts, routes, gateway_env, bottle, config, files, ..Default::default() };
        Self::start_spec(test, &spec)
    }

    /// The general form: see `WorldSpec`.
    pub fn start_spec(test: &str, spec: &WorldSpec<'_>) -> World {
        let WorldSpec {
            hosts,
            routes,
            gateway_env,
            bottle,
            config,
            files,
            private_files,
            netns,
            more_bottles,
            gateway_nameserver,
        } = *spec;
        let ca = TestCa::new();
        let extra_config = format!("upstream_ca_files: [test-ca.pem]\n{config}");
        let host_map: Vec<(&str, &str)> = hosts.iter().map(|h| (*h, "127.0.0.2")).collect();
        let env_spec = EnvSpec {
            hosts: &host_map,
            routes,
            extra_config: &extra_config,
            extra_bottle: bottle,
            netns,
            more_bottles,
            gateway_nameserver,
        };
        let mut env = TestEnv::new(test, env_spec);
        env.write_file("test-ca.pem", &ca.pem);
        for (name, contents) in files {
            env.write_file(name, contents);
        }
        for (name, contents) in private_files {
            env.write_private_file(name, contents);
        }
        let git_root = env.dir.join("repos");
        std::fs::create_dir_all(&git_root).unwrap();
        make_git_repo(&git_root, "repo");
        let up = HttpsUpstream::start("127.0.0.2", hosts, &ca, Some(git_root));
        env.start_gateway_with_env(gateway_env);
        let trust = env.trust_env();
        World { env, up, trust }
    }

    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.up.port())
    }

    /// Runs a command in the bottle with the trust variables set.
    pub fn run(&self, cmd: &[&str]) -> Output {
        let vars: Vec<(&str, &str)> = self.trust.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.env.exec_with_env(cmd, &vars)
    }

    /// curl in the bottle: (status code, body).
    pub fn curl(&self, args: &[&str]) -> (String, String) {
        curl_result(&self.run(&Self::curl_argv(args)))
    }

    /// Runs a command in another bottle of the test, with the trust variables set.
    pub fn run_in(&self, bottle: &str, cmd: &[&str]) -> Output {
        let vars: Vec<(&str, &str)> = self.trust.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.env.exec_in(bottle, cmd, &vars)
    }

    /// curl in another bottle: (status code, body).
    pub fn curl_in(&self, bottle: &str, args: &[&str]) -> (String, String) {
        curl_result(&self.run_in(bottle, &Self::curl_argv(args)))
    }

    /// The trust variables (for commands started another way).
    pub fn trust_vars(&self) -> Vec<(&str, &str)> {
        self.trust.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    /// curl in the bottle without waiting: finish it with `curl_result(&child.wait_with_output()?)`.
    pub fn spawn_curl(&self, args: &[&str]) -> std::process::Child {
        let vars: Vec<(&str, &str)> = self.trust.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.env.spawn_exec(&Self::curl_argv(args), &vars)
    }

    fn curl_argv<'a>(args: &[&'a str]) -> Vec<&'a str> {
        let mut cmd = vec!["curl", "-sS", "-m", "60", "-w", "\n%{http_code}"];
        cmd.extend_from_slice(args);
        cmd
    }
}

/// (status code, body) of a finished curl started by `World`.
pub fn curl_result(out: &Output) -> (String, String) {
    let text = stdout(out);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (code.to_string(), body.to_string())
}
