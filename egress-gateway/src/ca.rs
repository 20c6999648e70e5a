//! The interception CA: created once in the state directory (key 0600, certificate 0644),
//! exported for the bottles' trust stores, and used to mint a short-lived leaf per host name
//! on first use.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{pki_types::PrivateKeyDer, sign::CertifiedKey};

pub const CA_CERT_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
/// System roots followed by the CA, written at start for `SSL_CERT_FILE` and friends.
const CA_BUNDLE_FILE: &str = "ca-bundle.pem";
/// Others may reach the public files by name but not list the directory: the key, the
/// supervise store and the credentials stay 0600 inside it.
const STATE_DIR_MODE: u32 = 0o711;
const PUBLIC_FILE_MODE: u32 = 0o644;
const PRIVATE_FILE_MODE: u32 = 0o600;
/// The CA's subject. Fixed, so the issuer can be rebuilt from the key alone on restart.
const CA_COMMON_NAME: &str = "egress-gateway interception CA";
const CA_ORGANIZATION: &str = "egress-gateway";
const CA_VALIDITY_DAYS: i64 = 3650;
/// Leaves are short-lived; the cache forgets them well before they expire.
const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
const LEAF_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
const LEAF_CACHE_ENTRIES: u64 = 10_000;
/// Clock skew allowance for freshly minted leaves.
const LEAF_BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("a CA already exists in {0}: pass --force to replace it (every bottle must then trust the new one)")]
    Exists(PathBuf),
    #[error("minting a certificate for {host:?}: {reason}")]
    Mint { host: String, reason: String },
}

/// The CA and its cache of minted leaves.
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: rustls::pki_types::CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    /// One key for every leaf: minting is then a signature, not a key generation.
    leaf_key: KeyPair,
    leaf_signing_key: Arc<dyn rustls::sign::SigningKey>,
    cache: moka::sync::Cache<String, Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("cached_leaves", &self.cache.entry_count()).finish()
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

impl CertificateAuthority {
    /// Creates a CA in `state_dir`; refuses to replace one unless `force`.
    pub fn init(state_dir: &Path, force: bool) -> Result<(), CaError> {
        let cert_path = state_dir.join(CA_CERT_FILE);
        if cert_path.exists() && !force {
            return Err(CaError::Exists(state_dir.to_path_buf()));
        }
        let file_err =
            |path: &Path, e: &dyn std::fmt::Display| CaError::File { path: path.to_path_buf(), reason: e.to_string() };
        fs::create_dir_all(state_dir).map_err(|e| file_err(state_dir, &e))?;
        fs::set_permissions(state_dir, fs::Permissions::from_mode(STATE_DIR_MODE))
            .map_err(|e| file_err(state_dir, &e))?;
        let key = KeyPair::generate().map_err(|e| file_err(state_dir, &e))?;
        let mut params = ca_params();
        let now = time_now();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key).map_err(|e| file_err(&cert_path, &e))?;
        write_file(&state_dir.join(CA_KEY_FILE), key.serialize_pem().as_bytes(), PRIVATE_FILE_MODE)?;
        write_file(&cert_path, cert.pem().as_bytes(), PUBLIC_FILE_MODE)?;
        Ok(())
    }

    /// Loads the CA from `state_dir`, creating it first if there is none.
    pub fn load_or_create(state_dir: &Path) -> Result<CertificateAuthority, CaError> {
        if !state_dir.join(CA_CERT_FILE).exists() {
            Self::init(state_dir, false)?;
        }
        Self::load(state_dir)
    }

    pub fn load(state_dir: &Path) -> Result<CertificateAuthority, CaError> {
        let read = |name: &str| {
            let path = state_dir.join(name);
            fs::read_to_string(&path).map_err(|e| CaError::File { path, reason: e.to_string() })
        };
        let cert_pem = read(CA_CERT_FILE)?;
        let key_path = state_dir.join(CA_KEY_FILE);
        let mode = fs::metadata(&key_path).map(|m| m.permissions().mode() & 0o077).unwrap_or(0);
        if mode != 0 {
            return Err(CaError::File {
                path: key_path,
                reason: "the CA key must not be readable by group or others (chmod 600)".into(),
            });
        }
        let key = KeyPair::from_pem(&read(CA_KEY_FILE)?)
            .map_err(|e| CaError::File { path: key_path.clone(), reason: e.to_string() })?;
        let cert_der =
            rustls_pemfile::certs(&mut cert_pem.as_bytes()).next().and_then(Result::ok).ok_or_else(|| {
                CaError::File { path: state_dir.join(CA_CERT_FILE), reason: "no certificate in the file".into() }
            })?;
        let leaf_key = KeyPair::generate().map_err(|e| CaError::Mint { host: String::new(), reason: e.to_string() })?;
        let leaf_der = PrivateKeyDer::try_from(leaf_key.serialize_der())
            .map_err(|e| CaError::Mint { host: String::new(), reason: e.to_string() })?;
        let leaf_signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&leaf_der)
            .map_err(|e| CaError::Mint { host: String::new(), reason: e.to_string() })?;
        Ok(CertificateAuthority {
            cert_pem,
            cert_der,
            issuer: Issuer::new(ca_params(), key),
            leaf_key,
            leaf_signing_key,
            cache: moka::sync::Cache::builder().max_capacity(LEAF_CACHE_ENTRIES).time_to_live(LEAF_CACHE_TTL).build(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The leaf for `host` (a DNS name or an IP literal), minted on first use; concurrent
    /// first requests for one host mint once.
    pub fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(hit) = self.cache.get(&host) {
            crate::metrics::global().leaf_lookup(true);
            return Ok(hit);
        }
        crate::metrics::global().leaf_lookup(false);
        self.cache
            .try_get_with(host.clone(), || self.mint(&host).map(Arc::new))
            .map_err(|e: Arc<CaError>| CaError::Mint { host, reason: e.to_string() })
    }

    fn mint(&self, host: &str) -> Result<CertifiedKey, CaError> {
        let mint_err = |e: &dyn std::fmt::Display| CaError::Mint { host: host.to_string(), reason: e.to_string() };
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(|e| mint_err(&e))?),
        }];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        // ExplicitNoCa makes rcgen write basicConstraints CA:false and the SKI, which some
        // clients (Python 3.13) require next to the AKI.
        params.is_ca = IsCa::ExplicitNoCa;
        let now = time_now();
        params.not_before = now - time::Duration::try_from(LEAF_BACKDATE).map_err(|e| mint_err(&e))?;
        params.not_after = now + time::Duration::try_from(LEAF_VALIDITY).map_err(|e| mint_err(&e))?;
        let mut serial = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut serial);
        serial[0] &= 0x7f;
        params.serial_number = Some(serial.to_vec().into());
        let cert = params.signed_by(&self.leaf_key, &self.issuer).map_err(|e| mint_err(&e))?;
        Ok(CertifiedKey::new(vec![cert.der().clone(), self.cert_der.clone()], self.leaf_signing_key.clone()))
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Writes `data` whole or not at all (a temporary file per process, renamed), with `mode`
/// set at creation so the file is never briefly wider than asked.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let err = |e: std::io::Error| CaError::File { path: path.to_path_buf(), reason: e.to_string() };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp).map_err(err)?;
    f.set_permissions(fs::Permissions::from_mode(mode)).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// The CA certificate alone, read without the key: what `ca export` prints, so exporting
/// needs no access to the key.
pub fn public_pem(state_dir: &Path) -> Result<String, CaError> {
    let path = state_dir.join(CA_CERT_FILE);
    let pem = fs::read_to_string(&path).map_err(|e| CaError::File { path: path.clone(), reason: e.to_string() })?;
    let has_cert = matches!(rustls_pemfile::certs(&mut pem.as_bytes()).next(), Some(Ok(_)));
    if has_cert { Ok(pem) } else { Err(CaError::File { path, reason: "no certificate in the file".into() }) }
}

/// The files a bottle's clients are pointed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustFiles {
    /// The CA certificate alone (`NODE_EXTRA_CA_CERTS` adds it to Node's own roots).
    pub ca: PathBuf,
    /// System roots followed by the CA (`SSL_CERT_FILE` and the like replace the roots).
    pub bundle: PathBuf,
}

impl TrustFiles {
    pub fn in_state_dir(state_dir: &Path) -> TrustFiles {
        TrustFiles { ca: state_dir.join(CA_CERT_FILE), bundle: state_dir.join(CA_BUNDLE_FILE) }
    }
}

/// Makes the public half readable by everyone (a CA made by an older version was 0600 in a
/// 0700 directory) and writes the bundle next to it, so any user, in or out of a bottle,
/// can trust the gateway without root.
pub fn publish(state_dir: &Path) -> Result<TrustFiles, CaError> {
    let files = TrustFiles::in_state_dir(state_dir);
    let chmod = |path: &Path, mode: u32| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| CaError::File { path: path.to_path_buf(), reason: e.to_string() })
    };
    chmod(state_dir, STATE_DIR_MODE)?;
    chmod(&files.ca, PUBLIC_FILE_MODE)?;
    write_file(&files.bundle, trust_bundle(&public_pem(state_dir)?).as_bytes(), PUBLIC_FILE_MODE)?;
    Ok(files)
}

/// System roots followed by the CA: what a bottle's `SSL_CERT_FILE` should point at, so
/// both intercepted hosts and anything else trusted keep working.
pub fn trust_bundle(ca_pem: &str) -> String {
    let mut out = String::new();
    for cert in rustls_native_certs::load_native_certs().certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out.push_str(ca_pem);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_state() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("egress-ca-test-{}-{}", std::process::id(), rand::random::<u32>()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn verifier(ca: &CertificateAuthority) -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der.clone()).unwrap();
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn minted_leaves_verify_for_their_name_and_only_it() {
        let dir = temp_state();
        let ca = CertificateAuthority::load_or_create(&dir).unwrap();
        let v = verifier(&ca);
        let leaf = ca.leaf("api.upstream.test").unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let name = rustls::pki_types::ServerName::try_from("api.upstream.test").unwrap();
        v.verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &name, &[], now).expect("verifies for its name");
        let other = rustls::pki_types::ServerName::try_from("other.test").unwrap();
        assert!(v.verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &other, &[], now).is_err());
        let ip_leaf = ca.leaf("127.0.0.2").unwrap();
        let ip = rustls::pki_types::ServerName::try_from("127.0.0.2").unwrap();
        v.verify_server_cert(&ip_leaf.cert[0], &[], &ip, &[], now).expect("IP SAN");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn leaves_carry_aki_ski_and_server_auth() {
        let dir = temp_state();
        let ca = CertificateAuthority::load_or_create(&dir).unwrap();
        let der = ca.leaf("a.test").unwrap().cert[0].to_vec();
        // OIDs: authorityKeyIdentifier 2.5.29.35, subjectKeyIdentifier 2.5.29.14,
        // extKeyUsage 2.5.29.37 (DER: 06 03 55 1d xx).
        for (oid, name) in [(0x23u8, "AKI"), (0x0e, "SKI"), (0x25, "EKU"), (0x11, "SAN")] {
            assert!(der.windows(5).any(|w| w == [0x06, 0x03, 0x55, 0x1d, oid]), "leaf has no {name}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_first_requests_mint_once_and_restart_reuses_the_ca() {
        let dir = temp_state();
        let ca = Arc::new(CertificateAuthority::load_or_create(&dir).unwrap());
        let leaves: Vec<_> = (0..8)
            .map(|_| {
                let ca = ca.clone();
                std::thread::spawn(move || ca.leaf("same.test").unwrap())
            })
            .map(|t| t.join().unwrap())
            .collect();
        assert!(leaves.iter().all(|l| Arc::ptr_eq(l, &leaves[0])));
        let again = CertificateAuthority::load_or_create(&dir).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        let v = verifier(&again);
        let leaf = again.leaf("b.test").unwrap();
        let name = rustls::pki_types::ServerName::try_from("b.test").unwrap();
        v.verify_server_cert(&leaf.cert[0], &[], &name, &[], rustls::pki_types::UnixTime::now()).unwrap();
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn key_is_private_and_init_refuses_to_overwrite() {
        let dir = temp_state();
        CertificateAuthority::init(&dir, false).unwrap();
        let mode = fs::metadata(dir.join(CA_KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(CertificateAuthority::init(&dir, false), Err(CaError::Exists(_))));
        fs::set_permissions(dir.join(CA_KEY_FILE), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(CertificateAuthority::load(&dir).unwrap_err().to_string().contains("chmod 600"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_public_half_is_world_readable_and_exported_without_the_key() {
        let dir = temp_state();
        CertificateAuthority::init(&dir, false).unwrap();
        // A CA left by an older version: everything private.
        fs::set_permissions(dir.join(CA_CERT_FILE), fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let files = publish(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), STATE_DIR_MODE);
        assert_eq!(mode(&files.ca), PUBLIC_FILE_MODE);
        assert_eq!(mode(&files.bundle), PUBLIC_FILE_MODE);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), PRIVATE_FILE_MODE);
        let bundle = fs::read_to_string(&files.bundle).unwrap();
        let pem = fs::read_to_string(&files.ca).unwrap();
        assert!(bundle.ends_with(&pem), "the bundle ends with the CA");
        // Export reads the certificate only: it works with the key gone.
        fs::remove_file(dir.join(CA_KEY_FILE)).unwrap();
        assert_eq!(public_pem(&dir).unwrap(), pem);
        fs::remove_dir_all(dir).unwrap();
    }
}
