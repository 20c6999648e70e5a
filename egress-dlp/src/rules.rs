//! The built-in token-pattern rules: real provider formats, each with the literal
//! keywords that must appear for it to be tried (a cheap prefilter), written for this
//! project (formats as documented by each provider). Rules marked "(format from Nosey
//! Parker)" cover a format we first learnt of from Nosey Parker's rule of the same name
//! (praetorian-inc/noseyparker, Apache-2.0; see testdata/dlp-independent/NOTICE): the
//! regex is ours, checked against that rule's published examples. Rules marked "(format
//! from Kingfisher)" are the same for Kingfisher (mongodb/kingfisher, Apache-2.0; same
//! NOTICE).

/// One rule: `regex` must match the secret itself (group 1 if it has a group).
pub struct RuleDef {
    pub id: &'static str,
    /// The human part of the reason, e.g. "GitHub personal access token".
    pub name: &'static str,
    pub regex: &'static str,
    /// Literal substrings, one of which must occur; empty: always tried.
    pub keywords: &'static [&'static str],
}

macro_rules! rule {
    ($id:literal, $name:literal, $re:literal, [$($kw:literal),*]) => {
        RuleDef { id: $id, name: $name, regex: $re, keywords: &[$($kw),*] }
    };
}

pub const BUILTIN: &[RuleDef] = &[
    // Cloud providers
    rule!(
        "aws-access-key-id",
        "AWS access key id",
        r"\b((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16}|A3T[A-Z0-9][A-Z0-9]{16})\b",
        ["AKIA", "ASIA", "ABIA", "ACCA", "A3T"]
    ),
    // (format from Nosey Parker)
    rule!(
        "amazon-mws-token",
        "Amazon MWS auth token",
        r"\b(amzn\.mws\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\b",
        ["amzn.mws."]
    ),
    // (format from Nosey Parker)
    rule!("aws-appsync-key", "AWS AppSync API key", r"\b(da2-[a-z0-9]{26})\b", ["da2-"]),
    rule!("gcp-api-key", "Google API key", r"\b(AIza[0-9A-Za-z_\-]{35})\b", ["AIza"]),
    rule!("google-oauth-access-token", "Google OAuth access token", r"\b(ya29\.[A-Za-z0-9_\-]{30,})", ["ya29."]),
    rule!("gcp-oauth-client-secret", "Google OAuth client secret", r"\b(GOCSPX-[A-Za-z0-9_\-]{28})\b", ["GOCSPX-"]),
    // Storage account keys (86 characters) and the shorter Service Bus, Event Hubs and IoT
    // Hub shared access keys.
    rule!(
        "azure-storage-connection-string",
        "Azure storage or shared access key",
        r"(?:AccountKey|SharedAccessKey)\s*=\s*([A-Za-z0-9+/]{40,100}={0,2})",
        ["AccountKey", "SharedAccessKey"]
    ),
    // (format from Nosey Parker)
    rule!(
        "azure-app-configuration-secret",
        "Azure App Configuration secret",
        r"\.azconfig\.io;\s*Id=[^;\s]{4,64};\s*Secret=([A-Za-z0-9+/]{36,64}={0,2})",
        ["azconfig.io"]
    ),
    // (format from Nosey Parker) The 84-character tokens Azure DevOps issues since 2024.
    rule!(
        "azure-devops-pat",
        "Azure DevOps personal access token",
        r"\b([A-Za-z0-9]{76}AZDO[A-Za-z0-9]{4})\b",
        ["AZDO"]
    ),
    rule!(
        "azure-ad-client-secret",
        "Azure AD client secret",
        r"(?:^|\\[nrt]|[^A-Za-z0-9_~.\-])([A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.\-]{31,34})(?:$|[^A-Za-z0-9_~.\-])",
        ["Q~"]
    ),
    rule!("alibaba-access-key-id", "Alibaba Cloud access key id", r"\b(LTAI[A-Za-z0-9]{20})\b", ["LTAI"]),
    rule!("digitalocean-token", "DigitalOcean token", r"\b(do[opr]_v1_[a-f0-9]{64})\b", ["_v1_"]),
    rule!("heroku-api-key", "Heroku API key", r"\b(HRKU-[A-Za-z0-9_\-]{60})\b", ["HRKU-"]),
    rule!("flyio-token", "Fly.io access token", r"\b(fm[12]_[A-Za-z0-9+/]{100,}={0,2})", ["fm1_", "fm2_"]),
    rule!("cloudflare-origin-ca-key", "Cloudflare origin CA key", r"\b(v1\.0-[a-f0-9]{24}-[a-f0-9]{146})\b", ["v1.0-"]),
    // Service, batch and recovery tokens; service tokens without a namespace are short.
    rule!("vault-token", "HashiCorp Vault token", r"\b(hv[sbr]\.[A-Za-z0-9_\-]{24,})", ["hvs.", "hvb.", "hvr."]),
    rule!(
        "terraform-cloud-token",
        "Terraform Cloud token",
        r"\b([A-Za-z0-9]{14}\.atlasv1\.[A-Za-z0-9_\-=]{60,70})",
        [".atlasv1."]
    ),
    rule!("pulumi-token", "Pulumi access token", r"\b(pul-[a-f0-9]{40})\b", ["pul-"]),
    // A service token may name its environment: `dp.st.dev.<40-44>`.
    rule!(
        "doppler-token",
        "Doppler token",
        r"\b(dp\.(?:pt|st(?:\.[a-z0-9_\-]{2,35})?|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44})\b",
        ["dp."]
    ),
    rule!(
        "tailscale-key",
        "Tailscale key",
        r"\b(tskey-(?:api|auth|client|scim|webhook)-[A-Za-z0-9]{6,}-[A-Za-z0-9]{20,})",
        ["tskey-"]
    ),
    rule!("supabase-token", "Supabase access token", r"\b(sbp_[a-f0-9]{40})\b", ["sbp_"]),
    rule!(
        "planetscale-token",
        "PlanetScale token",
        r"\b(pscale_(?:tkn|pw|oauth)_[A-Za-z0-9_\-.=]{32,64})",
        ["pscale_"]
    ),
    // Source hosting and CI
    rule!("github-pat", "GitHub personal access token", r"\b(ghp_[A-Za-z0-9]{36})\b", ["ghp_"]),
    rule!("github-oauth", "GitHub OAuth token", r"\b(gho_[A-Za-z0-9]{36})\b", ["gho_"]),
    rule!("github-app-token", "GitHub app token", r"\b((?:ghu|ghs)_[A-Za-z0-9]{36})\b", ["ghu_", "ghs_"]),
    rule!("github-refresh-token", "GitHub refresh token", r"\b(ghr_[A-Za-z0-9]{36,76})\b", ["ghr_"]),
    rule!(
        "github-fine-grained-pat",
        "GitHub fine-grained token",
        r"\b(github_pat_[A-Za-z0-9_]{82})\b",
        ["github_pat_"]
    ),
    rule!("gitlab-pat", "GitLab personal access token", r"\b(glpat-[A-Za-z0-9_\-]{20,})\b", ["glpat-"]),
    // Runner authentication tokens, and the older registration tokens (`GR1348941`).
    rule!(
        "gitlab-runner-token",
        "GitLab runner token",
        r"\b(glrt-[A-Za-z0-9_\-]{20,}|GR1348941[A-Za-z0-9_\-]{20})\b",
        ["glrt-", "GR1348941"]
    ),
    // (format from Nosey Parker)
    rule!("gitlab-trigger-token", "GitLab pipeline trigger token", r"\b(glptt-[a-f0-9]{40})\b", ["glptt-"]),
    rule!("gitlab-deploy-token", "GitLab deploy token", r"\b(gldt-[A-Za-z0-9_\-]{20,})\b", ["gldt-"]),
    rule!("atlassian-api-token", "Atlassian API token", r"\b(ATATT3[A-Za-z0-9_\-=]{186})", ["ATATT3"]),
    rule!("bitbucket-app-password", "Bitbucket app password", r"\b(ATBB[A-Za-z0-9_\-=.]{32,})", ["ATBB"]),
    rule!(
        "sourcegraph-token",
        "Sourcegraph access token",
        r"\b(sgp_(?:[a-f0-9]{16}_|local_)?[a-f0-9]{40})\b",
        ["sgp_"]
    ),
    rule!("buildkite-token", "Buildkite API token", r"\b(bkua_[a-f0-9]{40})\b", ["bkua_"]),
    // (formats from Kingfisher)
    rule!(
        "sourcegraph-license-key",
        "Sourcegraph license key (Cody Gateway access)",
        r"\b(slk_[a-f0-9]{64})\b",
        ["slk_"]
    ),
    // User, project-analysis and global-analysis tokens (SonarQube 9.5 and later).
    rule!("sonarqube-token", "SonarQube token", r"\b(sq[pua]_[a-f0-9]{40})\b", ["sqp_", "squ_", "sqa_"]),
    rule!(
        "circleci-token",
        "CircleCI personal API token",
        r"\b(CCIPAT_[A-Za-z0-9]{20,30}_[A-Za-z0-9]{40})\b",
        ["CCIPAT_"]
    ),
    // (format from Nosey Parker) A JWT-like token whose header decodes to `{"typ": "TCV2"}`.
    rule!(
        "teamcity-token",
        "TeamCity API token",
        r"\b(eyJ0eXAiOiAiVENWMiJ9\.[A-Za-z0-9_\-]{36}\.[A-Za-z0-9_\-]{48})",
        ["eyJ0eXAiOiAiVENWMiJ9"]
    ),
    // Chat and collaboration
    rule!("slack-token", "Slack token", r"\b(xox[abposr]-[0-9]{6,}-[A-Za-z0-9\-]{10,})", ["xox"]),
    // (format from Kingfisher) With token rotation: refresh tokens (`xoxe-1-`) and the
    // rotating access tokens (`xoxe.xoxp-1-`, `xoxe.xoxb-1-`).
    rule!(
        "slack-rotating-token",
        "Slack rotating or refresh token",
        r"\b(xoxe(?:\.xox[bp])?-[0-9]-[A-Za-z0-9]{100,200})\b",
        ["xoxe-", "xoxe.xox"]
    ),
    rule!(
        "slack-app-token",
        "Slack app-level token",
        r"\b(xapp-[0-9]-[A-Z0-9]{9,12}-[0-9]{10,14}-[a-f0-9]{32,80}|xapp-[0-9]{12}-[A-Za-z0-9/+]{24})\b",
        ["xapp-"]
    ),
    rule!(
        "slack-webhook",
        "Slack webhook URL",
        r"((?:https?://)?hooks\.slack\.com/services/T[A-Z0-9_]{6,}/B[A-Z0-9_]{6,}/[A-Za-z0-9_]{20,})",
        ["hooks.slack.com"]
    ),
    rule!(
        "discord-bot-token",
        "Discord bot token",
        r"\b([MNO][A-Za-z0-9_\-]{23,25}\.[A-Za-z0-9_\-]{6}\.[A-Za-z0-9_\-]{27,38})\b",
        // The first part is the base64 of a decimal user id (`rejected` checks it), so it
        // starts with one of these: base64 of a first digit 0-9.
        ["MD", "MT", "Mj", "Mz", "ND", "NT", "Nj", "Nz", "OD", "OT"]
    ),
    rule!(
        "discord-webhook",
        "Discord webhook URL",
        r"(discord(?:app)?\.com/api/webhooks/[0-9]{17,20}/[A-Za-z0-9_\-]{60,70})",
        ["/api/webhooks/"]
    ),
    // Current (`<tenant>.webhook.office.com/webhookb2/`) and older (`outlook.office.com/webhook/`) URLs.
    rule!(
        "teams-webhook",
        "Microsoft Teams webhook URL",
        r"((?:https://)?(?:[A-Za-z0-9\-]+\.webhook\.office\.com/webhookb2|webhook\.office\.com/webhookb2|outlook\.office(?:365)?\.com/webhook)/[a-f0-9\-]{36}@[a-f0-9\-]{36}/IncomingWebhook/[a-f0-9]{32}/[a-f0-9\-]{36})",
        ["webhookb2/", "outlook.office"]
    ),
    rule!("telegram-bot-token", "Telegram bot token", r"\b([0-9]{8,10}:AA[A-Za-z0-9_\-]{32,33})\b", [":AA"]),
    rule!("linear-api-key", "Linear API key", r"\b(lin_api_[A-Za-z0-9]{40})\b", ["lin_api_"]),
    rule!(
        "notion-token",
        "Notion integration token",
        r"\b((?:secret_[A-Za-z0-9]{43})|(?:ntn_[0-9]{11}[A-Za-z0-9]{35}))\b",
        ["secret_", "ntn_"]
    ),
    rule!("postman-api-key", "Postman API key", r"\b(PMAK-[a-f0-9]{24}-[a-f0-9]{34})\b", ["PMAK-"]),
    rule!("figma-token", "Figma access token", r"\b(figd_[A-Za-z0-9_\-]{40,})", ["figd_"]),
    // (formats from Nosey Parker) Single-product SaaS keys with a prefix of their own.
    rule!("adafruit-io-key", "Adafruit IO key", r"\b(aio_[A-Za-z0-9]{28})\b", ["aio_"]),
    rule!(
        "adobe-client-secret",
        "Adobe OAuth client secret",
        r"\b(p8e-[A-Za-z0-9\-]{32})(?:[^A-Za-z0-9\-]|$)",
        ["p8e-"]
    ),
    rule!("dependency-track-key", "Dependency-Track API key", r"\b(odt_[A-Za-z0-9]{32,255})\b", ["odt_"]),
    rule!("dropbox-token", "Dropbox access token", r"\b(sl\.(?:u\.)?[A-Za-z0-9_\-]{130,})", ["sl."]),
    rule!("facebook-access-token", "Facebook access token", r"\b(EAACEdEose0cBA[A-Za-z0-9]{20,})", ["EAACEdEose0cBA"]),
    rule!(
        "mapbox-secret-token",
        "Mapbox secret or temporary token",
        r"\b([st]k\.eyJ[A-Za-z0-9_\-]{20,}\.[A-Za-z0-9_\-]{20,30})",
        ["sk.eyJ", "tk.eyJ"]
    ),
    rule!("salesforce-access-token", "Salesforce access token", r"\b(00D[A-Za-z0-9]{12}![A-Za-z0-9._]{96})", ["00D"]),
    rule!("segment-token", "Segment public API token", r"\b(sgp_[A-Za-z0-9]{64})\b", ["sgp_"]),
    rule!("stackhawk-key", "StackHawk API key", r"\b(hawk\.[A-Za-z0-9_\-]{20}\.[A-Za-z0-9_\-]{20})", ["hawk."]),
    rule!("twitch-stream-key", "Twitch stream key", r"\b(live_[0-9]{6,10}_[A-Za-z0-9]{30})\b", ["live_"]),
    // (formats from Kingfisher) Single-product SaaS keys with a prefix or structure of their own.
    rule!("contentful-token", "Contentful personal access token", r"\b(CFPAT-[A-Za-z0-9_\-]{43})\b", ["CFPAT-"]),
    rule!("easypost-key", "EasyPost API key", r"\b(EZ[AT]K[A-Za-z0-9]{54})\b", ["EZAK", "EZTK"]),
    rule!("flexport-key", "Flexport API key", r"\b(shltm_[A-Za-z0-9]{40})\b", ["shltm_"]),
    rule!("frameio-token", "Frame.io developer token", r"\b(fio-u-[A-Za-z0-9_\-]{64})\b", ["fio-u-"]),
    rule!("fullstory-key", "FullStory API key", r"\b(na1\.[A-Za-z0-9+/]{80,120}={0,2})", ["na1."]),
    rule!(
        "hubspot-token",
        "HubSpot private app token",
        r"\b(pat-(?:na|eu)[0-9]-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})\b",
        ["pat-na", "pat-eu"]
    ),
    rule!("maxmind-license-key", "MaxMind license key", r"\b([A-Za-z0-9]{6}_[A-Za-z0-9]{29}_mmk)\b", ["_mmk"]),
    rule!("posthog-personal-key", "PostHog personal API key", r"\b(phx_[A-Za-z0-9_]{43})\b", ["phx_"]),
    rule!("prefect-key", "Prefect API key", r"\b(pnu_[A-Za-z0-9]{36})\b", ["pnu_"]),
    rule!(
        "pubnub-key",
        "PubNub publish or subscribe key",
        r"\b((?:pub|sub)-c-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})\b",
        ["pub-c-", "sub-c-"]
    ),
    // Teamwork CRM, Desk and Spaces.
    rule!("teamwork-token", "Teamwork API token", r"\b(tkn\.v1_[A-Za-z0-9+/]{60,80}={0,2})", ["tkn.v1_"]),
    rule!("typeform-token", "Typeform personal access token", r"\b(tfp_[A-Za-z0-9_\-]{40,60})\b", ["tfp_"]),
    rule!("ubidots-token", "Ubidots token", r"\b(BBFF-[A-Za-z0-9]{30})\b", ["BBFF-"]),
    rule!(
        "voiceflow-key",
        "Voiceflow API key",
        r"\b(VF\.(?:DM|WS)\.[a-f0-9]{24}\.[A-Za-z0-9]{16})\b",
        ["VF.DM.", "VF.WS."]
    ),
    rule!("zoho-token", "Zoho OAuth token", r"\b(1000\.[a-f0-9]{32}\.[a-f0-9]{32})\b", ["1000."]),
    // Payments and commerce
    rule!("stripe-secret-key", "Stripe live key", r"\b((?:sk|rk)_live_[A-Za-z0-9]{24,247})\b", ["_live_"]),
    rule!("stripe-test-key", "Stripe test key", r"\b((?:sk|rk)_test_[A-Za-z0-9]{24,247})\b", ["_test_"]),
    rule!("stripe-webhook-secret", "Stripe webhook signing secret", r"\b(whsec_[A-Za-z0-9+/]{32,})", ["whsec_"]),
    rule!(
        "square-token",
        "Square access token",
        r"\b((?:EAAA[A-Za-z0-9_\-]{60})|(?:sq0csp-[A-Za-z0-9_\-]{43})|(?:sq0atp-[A-Za-z0-9_\-]{22}))\b",
        ["EAAA", "sq0csp-", "sq0atp-"]
    ),
    rule!(
        "shopify-token",
        "Shopify access token",
        r"\b(shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32})\b",
        ["shpat_", "shpca_", "shppa_", "shpss_"]
    ),
    rule!(
        "braintree-token",
        "Braintree access token",
        r"(access_token\$production\$[0-9a-z]{16}\$[0-9a-f]{32})",
        ["access_token$production$"]
    ),
    // (formats from Kingfisher)
    rule!("pagarme-key", "Pagar.me API key", r"\b(ak_(?:live|test)_[A-Za-z0-9]{30})\b", ["ak_live_", "ak_test_"]),
    rule!(
        "shippo-token",
        "Shippo API token",
        r"\b(shippo_(?:live|test)_[A-Za-z0-9]{40})\b",
        ["shippo_live_", "shippo_test_"]
    ),
    // Messaging and email
    rule!("sendgrid-api-key", "SendGrid API key", r"\b(SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})\b", ["SG."]),
    rule!("mailgun-api-key", "Mailgun API key", r"\b(key-[0-9a-f]{32})\b", ["key-"]),
    rule!("mailchimp-api-key", "Mailchimp API key", r"\b([0-9a-f]{32}-us[0-9]{1,2})\b", ["-us"]),
    rule!("twilio-api-key", "Twilio API key", r"\b(SK[0-9a-f]{32})\b", ["SK"]),
    // (formats from Kingfisher) API and SMTP keys.
    rule!(
        "brevo-key",
        "Brevo (Sendinblue) key",
        r"\b(x(?:keysib|smtpsib)-[a-f0-9]{64}-[A-Za-z0-9]{16})\b",
        ["xkeysib-", "xsmtpsib-"]
    ),
    rule!("courier-key", "Courier API key", r"\b(pk_(?:prod|test)_[A-Z0-9]{28})\b", ["pk_prod_", "pk_test_"]),
    // LLM and ML providers
    rule!("anthropic-api-key", "Anthropic API key", r"\b(sk-ant-[A-Za-z0-9_\-]{80,})", ["sk-ant-"]),
    rule!(
        "openai-project-key",
        "OpenAI project API key",
        r"\b(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,})",
        ["sk-proj-", "sk-svcacct-", "sk-admin-"]
    ),
    rule!(
        "openai-api-key",
        "OpenAI API key",
        r"\b(sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}|sk-[A-Za-z0-9]{48})\b",
        ["sk-"]
    ),
    rule!("huggingface-token", "Hugging Face token", r"\b(hf_[A-Za-z0-9]{34,40})\b", ["hf_"]),
    rule!("groq-api-key", "Groq API key", r"\b(gsk_[A-Za-z0-9]{52})\b", ["gsk_"]),
    rule!("xai-api-key", "xAI API key", r"\b(xai-[A-Za-z0-9]{80})\b", ["xai-"]),
    rule!("replicate-token", "Replicate API token", r"\b(r8_[A-Za-z0-9]{37})\b", ["r8_"]),
    rule!("perplexity-api-key", "Perplexity API key", r"\b(pplx-[A-Za-z0-9]{48})\b", ["pplx-"]),
    rule!("openrouter-api-key", "OpenRouter API key", r"\b(sk-or-v1-[a-f0-9]{64})\b", ["sk-or-v1-"]),
    rule!("langsmith-api-key", "LangSmith API key", r"\b(lsv2_(?:pt|sk)_[a-f0-9]{32}_[a-f0-9]{10})\b", ["lsv2_"]),
    rule!("pinecone-api-key", "Pinecone API key", r"\b(pcsk_[A-Za-z0-9]{4,8}_[A-Za-z0-9]{40,80})\b", ["pcsk_"]),
    rule!("tavily-api-key", "Tavily API key", r"\b(tvly-(?:dev-|prod-)?[A-Za-z0-9]{32})\b", ["tvly-"]),
    rule!("nvidia-api-key", "NVIDIA API key", r"\b(nvapi-[A-Za-z0-9_\-]{64})\b", ["nvapi-"]),
    rule!("deepseek-api-key", "DeepSeek API key", r"\b(sk-[a-f0-9]{32})\b", ["sk-"]),
    // (formats from Nosey Parker)
    rule!("firecrawl-api-key", "Firecrawl API key", r"\b(fc-[a-f0-9]{32})\b", ["fc-"]),
    rule!("jina-api-key", "Jina API key", r"\b(jina_[A-Za-z0-9]{60})\b", ["jina_"]),
    rule!("databricks-token", "Databricks token", r"\b(dapi[a-f0-9]{32}(?:-[0-9])?)\b", ["dapi"]),
    // (format from Kingfisher)
    rule!(
        "mongodb-atlas-service-account-secret",
        "MongoDB Atlas service account secret",
        r"\b(mdb_sa_sk_[A-Za-z0-9_\-]{40})\b",
        ["mdb_sa_sk_"]
    ),
    // Package registries
    rule!("npm-token", "npm access token", r"\b(npm_[A-Za-z0-9]{36})\b", ["npm_"]),
    rule!("pypi-token", "PyPI upload token", r"\b(pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,})", ["pypi-AgEIcHlwaS5vcmc"]),
    rule!("dockerhub-pat", "Docker Hub access token", r"\b(dckr_pat_[A-Za-z0-9_\-]{27})\b", ["dckr_pat_"]),
    rule!("rubygems-api-key", "RubyGems API key", r"\b(rubygems_[a-f0-9]{48})\b", ["rubygems_"]),
    rule!("crates-io-token", "crates.io API token", r"\b(cio[A-Za-z0-9]{32})\b", ["cio"]),
    rule!("nuget-api-key", "NuGet API key", r"\b(oy2[a-z0-9]{43})\b", ["oy2"]),
    rule!(
        "artifactory-token",
        "JFrog Artifactory token",
        r"\b(AKCp[A-Za-z0-9]{69}|cmVmdGtuOjAxOj[A-Za-z0-9]{50,})\b",
        ["AKCp", "cmVmdGtuOjAxOj"]
    ),
    rule!("clojars-token", "Clojars deploy token", r"\b(CLOJARS_[a-z0-9]{60})\b", ["CLOJARS_"]),
    // Observability
    // Cloud tokens, service account tokens, and the older API keys (base64 of `{"k":"`).
    rule!(
        "grafana-token",
        "Grafana token",
        r"\b((?:glc_[A-Za-z0-9+/]{32,400}={0,2})|(?:glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8})|(?:eyJrIjoi[A-Za-z0-9]{60,100}))",
        ["glc_", "glsa_", "eyJrIjoi"]
    ),
    // User, admin, REST, Insights insert and query keys, license keys, Pixie keys.
    rule!(
        "newrelic-api-key",
        "New Relic key",
        r"\b(NRAK-[A-Z0-9]{27}|NRAA-[a-f0-9]{27}|NRRA-[a-f0-9]{42}|NRI[IQ]-[A-Za-z0-9_\-]{32}|[A-Za-z0-9]{6}[a-f0-9]{30}NRAL|px-(?:api|dep)-[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12})(?:[^A-Za-z0-9_\-]|$)",
        ["NRAK-", "NRAA-", "NRRA-", "NRII-", "NRIQ-", "NRAL", "px-api-", "px-dep-"]
    ),
    rule!("sentry-token", "Sentry auth token", r"\b(sntry[su]_[A-Za-z0-9+/=_]{60,})", ["sntrys_", "sntryu_"]),
    rule!("dynatrace-token", "Dynatrace API token", r"\b(dt0c01\.[A-Z0-9]{24}\.[A-Z0-9]{64})\b", ["dt0c01."]),
    // Keys, credentials in structure
    rule!(
        "private-key",
        "private key",
        r"(-----BEGIN[ +](?:(?:RSA|EC|DSA|OPENSSH|ENCRYPTED|PGP)[ +])?PRIVATE[ +]KEY(?:[ +]BLOCK)?-----(?s:.*?-----END[ +][A-Z +]{0,20}PRIVATE[ +]KEY(?:[ +]BLOCK)?-----)?)",
        ["PRIVATE KEY", "PRIVATE+KEY"]
    ),
    // (format from Nosey Parker) A PEM private key block, base64-encoded again (Kubernetes
    // secrets, environment variables).
    rule!(
        "private-key-base64",
        "base64-encoded private key",
        r"((?:LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0t|LS0tLS1CRUdJTiBEU0EgUFJJVkFURSBLRVktLS0t|LS0tLS1CRUdJTiBFQyBQUklWQVRFIEtFWS0tLS0t|LS0tLS1CRUdJTiBPUEVOU1NIIFBSSVZBVEUgS0VZLS0tLS|LS0tLS1CRUdJTiBQUklWQVRFIEtFWS0tLS0t|LS0tLS1CRUdJTiBFTkNSWVBURUQgUFJJVkFURSBLRVktLS0t)[A-Za-z0-9+/=]{50,})",
        ["LS0tLS1CRUdJTi"]
    ),
    // (format from Nosey Parker) The private key in a WireGuard configuration.
    rule!("wireguard-private-key", "WireGuard private key", r"PrivateKey\s*=\s*([A-Za-z0-9+/]{43}=)", ["PrivateKey"]),
    rule!(
        "age-secret-key",
        "age secret key",
        r"(AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58})",
        ["AGE-SECRET-KEY-1"]
    ),
    rule!("jwt", "JSON web token", r"\b(eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,})", ["eyJ"]),
    rule!(
        "connection-string-password",
        "password in a connection string",
        r"(?:postgres(?:ql)?|postgis|mysql|mariadb|mongodb(?:\+srv)?|redis|rediss|amqps?|mssql)(?:\+[a-z0-9]{2,16})?://[^:\s/@]{0,64}:([^@\s/]{3,128})@",
        ["://"]
    ),
    rule!(
        "connection-string-password-field",
        "password in a connection string",
        r"(?i:\b(?:password|pwd)\s*=\s*)([^;'\x22\s\\][^;'\x22\s]{2,127})",
        ["password", "pwd"]
    ),
    rule!(
        "url-basic-credentials",
        "password in a URL",
        r"https?://[A-Za-z0-9._%\-]{1,64}:([^@\s/:]{3,128})@[A-Za-z0-9.\-]",
        ["://"]
    ),
    rule!("authorization-basic", "Basic credentials", r"(?i:basic)(?:\s|\+)+([A-Za-z0-9+/]{16,}={0,2})", ["asic"]),
    rule!("bearer-token", "Generic Bearer JWT", r"(?i:bearer)\s+([A-Za-z0-9._\-]{50,})", ["earer"]),
];

/// Documentation placeholders that look like keys but are published examples.
pub const PLACEHOLDERS: &[&str] = &[
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
    // jwt.io's example token.
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
];

/// A built-in regex as compiled. Rules say `\b` at their edges; in JSON text a value
/// often follows an escape (`\n`, `\t`), where `\b` does not hold (`n` is a word
/// character), so a leading `\b` also accepts one; a trailing `\b` also accepts a value
/// that ends in `-` (base64url) followed by any non-token character. The boundary is
/// ASCII (`(?-u:\b)`): a Unicode `\b` makes the regex crate's fast engine give up on
/// non-ASCII text, and with some patterns scanning such a body became ten times slower.
pub fn expand(regex: &str) -> String {
    let mut re = regex.to_string();
    if let Some(rest) = re.strip_prefix(r"\b") {
        re = format!(r"(?:(?-u:\b)|\\[nrt]){rest}");
    }
    if let Some(head) = re.strip_suffix(r"\b") {
        re = format!(r"{head}(?:(?-u:\b)|$|[^0-9A-Za-z_\-])");
    }
    re
}

/// A literal every match of a keyword-less rule contains: text without it skips the
/// rule, whose regex would otherwise crawl every run of token characters (a base64 body
/// is one long run).
pub fn required_literal(id: &str) -> Option<&'static str> {
    match id {
        "discord-bot-token" => Some("."),
        _ => None,
    }
}

/// Text that must come shortly before a match of rule `id` (see `CONTEXT_BEFORE`), as a
/// regex. A separate check rather than a part of the rule's regex: a regex that spans
/// the whole connection string compiles to thousands of states, and extracting its
/// capture group cost as much as scanning 100 KB.
pub fn required_context(id: &str) -> Option<&'static str> {
    match id {
        // `Password=` is a connection string's only when a server or user field
        // precedes it in the same `key=value;` list.
        "connection-string-password-field" => Some(r"(?i)\b(?:server|data source|host|provider|user id|uid)\s*=[^;]+;"),
        _ => None,
    }
}

/// How far before a match `required_context` is looked for, in bytes.
pub const CONTEXT_BEFORE: usize = 1024;

/// True when a match of rule `id` is not a credential: a published placeholder, a
/// template (`xxxx`, `<password>`, `${VAR}`, `#{var}`), or a value that fails the format's own
/// structure (a Discord id that is not a number, Basic credentials that are not
/// `user:password`).
pub fn rejected(id: &str, value: &str) -> bool {
    if PLACEHOLDERS.contains(&value) || value.contains("EXAMPLE") {
        return true;
    }
    let lower = value.to_ascii_lowercase();
    if ["xxxx", "****", "<", ">", "${", "#{", "{{", "your_", "your-"].iter().any(|p| lower.contains(p)) {
        return true;
    }
    match id {
        "discord-bot-token" => !discord_id_is_numeric(value),
        "authorization-basic" => !basic_is_user_password(value),
        "private-key" => private_key_is_elided(value),
        "connection-string-password" | "connection-string-password-field" | "url-basic-credentials" => {
            is_placeholder_password(value)
        }
        _ => false,
    }
}

/// A Discord bot token starts with the bot's numeric id in base64.
fn discord_id_is_numeric(value: &str) -> bool {
    use base64::Engine as _;
    let id = value.split('.').next().unwrap_or_default();
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let decoded = engine.decode(id.trim_end_matches('=')).unwrap_or_default();
    (17..=20).contains(&decoded.len()) && decoded.iter().all(u8::is_ascii_digit)
}

/// `Basic` credentials are base64 of `user:password` in printable text.
fn basic_is_user_password(value: &str) -> bool {
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::STANDARD_NO_PAD;
    let Ok(decoded) = engine.decode(value.trim_end_matches('=')) else { return false };
    let Ok(text) = std::str::from_utf8(&decoded) else { return false };
    text.split_once(':').is_some_and(|(user, pass)| !user.is_empty() && !pass.is_empty())
        && text.chars().all(|c| !c.is_control())
}

/// A complete key block with hardly any key material (`...` in documentation).
fn private_key_is_elided(value: &str) -> bool {
    let Some(end) = value.find("-----END") else { return false };
    let body = value[..end].split("-----").nth(2).unwrap_or_default();
    body.bytes().filter(u8::is_ascii_alphanumeric).count() < 32
}

/// Passwords that documentation writes where the real one goes.
fn is_placeholder_password(value: &str) -> bool {
    let lower = value.to_ascii_lowercase();
    value.starts_with(['$', '%', '[', '{'])
        || ["password", "passwd", "pass", "pwd", "secret", "mypassword", "changeme", "token", "pw"]
            .contains(&lower.as_str())
}
