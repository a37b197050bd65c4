//! `rayshape-certs`: TLS material for the rayshape webhook, without cert-manager.
//!
//! Exit status: 0 done (or, for `check`, everything fine), 1 `check` found a problem, 2 the
//! command could not run.

use base64::Engine;
use clap::{Parser, Subcommand};
use rayshape_certs::check;
use rayshape_certs::dir;
use rayshape_certs::pki::{self, CA_CERT, Names, PkiError, TLS_CERT, TLS_KEY};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "rayshape-certs",
    version,
    about = "Certificates for the rayshape webhook: a CA and a serving certificate, rotation with overlap, checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Who the serving certificate is for.
#[derive(clap::Args, Clone)]
struct Who {
    /// The webhook Service's name.
    #[arg(long, default_value = "rayshape-webhook")]
    service: String,
    /// The webhook's namespace.
    #[arg(long, default_value = "rayshape-system")]
    namespace: String,
    /// More DNS names for the serving certificate.
    #[arg(long = "dns")]
    dns: Vec<String>,
    /// IP addresses for the serving certificate (a webhook registered by URL).
    #[arg(long = "ip")]
    ips: Vec<IpAddr>,
    /// Lifetime of the serving certificate, in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

#[derive(Subcommand)]
enum Command {
    /// Make a CA (10 years) and a serving certificate (1 year) signed by it, in DIR:
    /// ca.crt, ca.key, tls.crt, tls.key.
    Generate {
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        who: Who,
        /// Lifetime of the CA, in days.
        #[arg(long, default_value_t = 3650)]
        ca_days: u32,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
    },
    /// Issue a new serving certificate from the CA in DIR (the one that signs: the first
    /// in ca.crt, whose key is ca.key), for the names given and every name of the one it
    /// replaces. Servers pick it up without a restart.
    Renew {
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        who: Who,
        /// Issue for exactly the names given, dropping those of the certificate it
        /// replaces.
        #[arg(long)]
        replace_names: bool,
    },
    /// Start a CA rotation: a new CA signs from now on, and ca.crt holds both the new and
    /// the old one, so clients trust either. Then: apply the new caBundle, `renew`, deploy
    /// the Secret, and `finish-rotation` once every client has the new bundle.
    RotateCa {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 3650)]
        ca_days: u32,
    },
    /// End a CA rotation: ca.crt holds only the CA that signs.
    FinishRotation {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt) from DIR.
    Secret {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "rayshape-webhook-tls")]
        name: String,
        #[arg(long, default_value = "rayshape-system")]
        namespace: String,
    },
    /// Print ca.crt base64-encoded: the caBundle of the webhook configuration.
    CaBundle {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Say when the serving certificate and the CAs expire, whether the serving certificate
    /// chains to ca.crt for the Service's name, and (with --webhook-config) whether each
    /// webhook's caBundle would accept it.
    Check {
        #[arg(long)]
        dir: PathBuf,
        /// The name the API server uses to reach the webhook.
        #[arg(long, default_value = "rayshape-webhook.rayshape-system.svc")]
        name: String,
        /// A rendered MutatingWebhookConfiguration (YAML or JSON, `-` for standard input).
        #[arg(long)]
        webhook_config: Option<PathBuf>,
        /// Warn when something expires within this many days.
        #[arg(long, default_value_t = 30)]
        warn_days: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate {
            out,
            who,
            ca_days,
            force,
        } => dir::generate(&out, &names(&who), who.days, ca_days, force).map(|()| {
            eprintln!(
                "wrote {}/{{ca.crt, ca.key, tls.crt, tls.key}}; keep ca.key safe, deploy the rest with `rayshape-certs secret`",
                out.display()
            )
        }),
        Command::Renew {
            dir,
            who,
            replace_names,
        } => {
            dir::renew(&dir, &names(&who), who.days, replace_names).map(|kept| {
                eprintln!("renewed {}/tls.crt and tls.key", dir.display());
                if !kept.is_empty() {
                    eprintln!(
                        "kept from the certificate it replaces: {}",
                        kept.join(", ")
                    );
                }
            })
        }
        Command::RotateCa { dir, ca_days } => dir::rotate_ca(&dir, ca_days).map(|()| {
            eprintln!(
                "ca.crt now trusts the new CA and the old one; apply the new caBundle, then `renew`, deploy, and `finish-rotation`"
            )
        }),
        Command::FinishRotation { dir } => dir::finish_rotation(&dir)
            .map(|()| eprintln!("ca.crt holds only the new CA; apply the new caBundle")),
        Command::Secret {
            dir,
            name,
            namespace,
        } => secret(&dir, &name, &namespace),
        Command::CaBundle { dir } => pki::read(&dir.join(CA_CERT)).map(|ca| {
            println!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(ca.as_bytes())
            );
        }),
        Command::Check {
            dir,
            name,
            webhook_config,
            warn_days,
        } => {
            return match checks(&dir, &name, webhook_config.as_deref(), warn_days) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn names(who: &Who) -> Names {
    Names::for_service(&who.service, &who.namespace, &who.dns, &who.ips)
}

fn secret(dir: &Path, name: &str, namespace: &str) -> Result<(), PkiError> {
    let b64 = |f: &str| -> Result<String, PkiError> {
        Ok(base64::engine::general_purpose::STANDARD.encode(pki::read(&dir.join(f))?.as_bytes()))
    };
    let tls_key = pki::read(&dir.join(TLS_KEY))?;
    pki::check_key(&dir.join(TLS_KEY), &tls_key)?;
    println!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\n  namespace: {namespace}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n  ca.crt: {}",
        b64(TLS_CERT)?,
        b64(TLS_KEY)?,
        b64(CA_CERT)?
    );
    Ok(())
}

fn checks(dir: &Path, name: &str, config: Option<&Path>, warn_days: i64) -> Result<bool, PkiError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut fine = true;
    let mut report = |what: &str, der: &[u8]| match pki::not_after(der) {
        Some(t) => {
            let left = (t - now) / 86_400;
            if t <= now {
                fine = false;
                println!("EXPIRED  {what}: expired {} days ago", -left);
            } else if left < warn_days {
                println!("WARNING  {what}: expires in {left} days");
            } else {
                println!("ok       {what}: expires in {left} days");
            }
        }
        None => {
            fine = false;
            println!("ERROR    {what}: cannot read its expiry");
        }
    };
    let tls = pki::read(&dir.join(TLS_CERT))?;
    let Some(leaf) = pki::certificates(&tls).into_iter().next() else {
        return Err(PkiError::NoCertificate {
            path: dir.join(TLS_CERT),
        });
    };
    report("serving certificate (tls.crt)", &leaf);
    let bundle = pki::read(&dir.join(CA_CERT))?;
    let cas = pki::certificates(&bundle);
    for (i, ca) in cas.iter().enumerate() {
        report(&format!("CA #{} of ca.crt", i + 1), ca);
    }
    match check::verify_chain(&leaf, &cas, name) {
        Ok(()) => println!("ok       tls.crt chains to ca.crt for {name}"),
        Err(e) => {
            fine = false;
            println!("ERROR    tls.crt does not chain to ca.crt for {name}: {e}");
        }
    }
    if let Some(path) = config {
        let text = if path.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|source| {
                PkiError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            s
        } else {
            pki::read(path)?
        };
        let bundles = check::ca_bundles(&text).map_err(PkiError::Invalid)?;
        if bundles.is_empty() {
            fine = false;
            println!("ERROR    {} holds no webhook configuration", path.display());
        }
        for (webhook, bundle) in bundles {
            let roots = bundle
                .as_deref()
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .and_then(|pem| String::from_utf8(pem).ok())
                .map(|pem| pki::certificates(&pem))
                .unwrap_or_default();
            match check::verify_chain(&leaf, &roots, name) {
                Ok(()) => println!("ok       webhook {webhook}: its caBundle accepts tls.crt"),
                Err(e) => {
                    fine = false;
                    println!(
                        "ERROR    webhook {webhook}: its caBundle does not accept tls.crt: {e}"
                    );
                }
            }
        }
    }
    Ok(fine)
}
