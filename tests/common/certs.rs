//! Test certificates: a CA and certificates it signs for `localhost` and 127.0.0.1, written as
//! PEM files for MariaDB, rwproxy and the clients.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// PEM files in one directory: `ca.pem`, `<name>.pem` and `<name>-key.pem` per certificate.
#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    /// A new CA in `dir` and, signed by it, one certificate per name in `names`.
    pub fn generate(dir: &Path, names: &[&str]) -> Result<Certs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "rwproxy test CA");
        let ca_key = KeyPair::generate().map_err(|e| e.to_string())?;
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(|e| e.to_string())?;
        write(&dir.join("ca.pem"), &ca.pem())?;
        for name in names {
            let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .map_err(|e| e.to_string())?;
            params.distinguished_name.push(rcgen::DnType::CommonName, *name);
            let key = KeyPair::generate().map_err(|e| e.to_string())?;
            let cert = params.signed_by(&key, &ca).map_err(|e| e.to_string())?;
            write(&dir.join(format!("{name}.pem")), &cert.pem())?;
            write(&dir.join(format!("{name}-key.pem")), &key.serialize_pem())?;
        }
        Ok(Certs { dir: dir.to_path_buf() })
    }

    pub fn ca(&self) -> String {
        self.dir.join("ca.pem").display().to_string()
    }

    pub fn cert(&self, name: &str) -> String {
        self.dir.join(format!("{name}.pem")).display().to_string()
    }

    pub fn key(&self, name: &str) -> String {
        self.dir.join(format!("{name}-key.pem")).display().to_string()
    }
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}
