//! `docs/API.md` is generated from the `.proto` files (services, methods, messages, fields, enums, with
//! their comments) and this test keeps it current: it fails when the committed file differs from what
//! the protos say. `BERTH_UPDATE_DOCS=1 cargo test -p berth-proto --test api_docs` rewrites it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use prost::Message;
use prost_types::{DescriptorProto, EnumDescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// The leading comment at a descriptor path, as Markdown text (one paragraph per blank line).
fn comment(file: &FileDescriptorProto, path: &[i32]) -> String {
    let Some(info) = &file.source_code_info else { return String::new() };
    let Some(loc) = info.location.iter().find(|l| l.path == path) else { return String::new() };
    let text = loc.leading_comments.clone().unwrap_or_default();
    text.lines().map(str::trim).collect::<Vec<_>>().join(" ").replace("  ", "\n\n").trim().to_string()
}

fn short(type_name: &str) -> String {
    type_name.rsplit('.').next().unwrap_or(type_name).to_string()
}

fn field_type(f: &prost_types::FieldDescriptorProto) -> String {
    use prost_types::field_descriptor_proto::{Label, Type};
    let base = match f.r#type() {
        Type::Message | Type::Enum => format!("`{}`", short(f.type_name())),
        t => format!("`{}`", t.as_str_name().trim_start_matches("TYPE_").to_lowercase()),
    };
    if f.label() == Label::Repeated { format!("repeated {base}") } else { base }
}

fn message(out: &mut String, file: &FileDescriptorProto, m: &DescriptorProto, path: Vec<i32>, prefix: &str) {
    let name = format!("{prefix}{}", m.name());
    if m.options.as_ref().is_some_and(|o| o.map_entry()) {
        return;
    }
    out.push_str(&format!("### `{name}`\n\n"));
    let c = comment(file, &path);
    if !c.is_empty() {
        out.push_str(&format!("{c}\n\n"));
    }
    if !m.field.is_empty() {
        out.push_str("| field | type | # | meaning |\n|---|---|---|---|\n");
        for (i, f) in m.field.iter().enumerate() {
            let mut p = path.clone();
            p.extend([2, i as i32]);
            let c = comment(file, &p).replace('\n', " ").replace('|', "\\|");
            out.push_str(&format!("| `{}` | {} | {} | {c} |\n", f.name(), field_type(f), f.number()));
        }
        out.push('\n');
    }
    for (i, e) in m.enum_type.iter().enumerate() {
        let mut p = path.clone();
        p.extend([4, i as i32]);
        enumeration(out, file, e, p, &format!("{name}."));
    }
    for (i, n) in m.nested_type.iter().enumerate() {
        let mut p = path.clone();
        p.extend([3, i as i32]);
        message(out, file, n, p, &format!("{name}."));
    }
}

fn enumeration(out: &mut String, file: &FileDescriptorProto, e: &EnumDescriptorProto, path: Vec<i32>, prefix: &str) {
    out.push_str(&format!("### enum `{prefix}{}`\n\n", e.name()));
    let c = comment(file, &path);
    if !c.is_empty() {
        out.push_str(&format!("{c}\n\n"));
    }
    out.push_str("| value | # | meaning |\n|---|---|---|\n");
    for (i, v) in e.value.iter().enumerate() {
        let mut p = path.clone();
        p.extend([2, i as i32]);
        let c = comment(file, &p).replace('\n', " ").replace('|', "\\|");
        out.push_str(&format!("| `{}` | {} | {c} |\n", v.name(), v.number()));
    }
    out.push('\n');
}

fn generate() -> String {
    let set = FileDescriptorSet::decode(berth_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = String::from(
        "# Berth API reference\n\nGenerated from the `.proto` files under `proto/berth/` by \
         `proto/tests/api_docs.rs`; do not edit by hand. Every RPC returns a gRPC status with a code and a \
         message a person can act on; berthd also serves gRPC reflection (`grpc.reflection.v1` and `v1alpha`, with these comments) and `grpc.health.v1`. On berthd's Unix socket any gRPC client works with its default options (a socket path sent as `:authority` is accepted) and needs no token (the socket's permissions guard it); over TCP every call carries `authorization: Bearer <api token>`.\n\n",
    );
    for file in set.file.iter().filter(|f| f.name().starts_with("berth/")) {
        out.push_str(&format!("## Package `{}` (`{}`)\n\n", file.package(), file.name()));
        for (si, s) in file.service.iter().enumerate() {
            out.push_str(&format!("### service `{}`\n\n", s.name()));
            let c = comment(file, &[6, si as i32]);
            if !c.is_empty() {
                out.push_str(&format!("{c}\n\n"));
            }
            out.push_str("| method | request | response | meaning |\n|---|---|---|---|\n");
            for (mi, m) in s.method.iter().enumerate() {
                let stream =
                    |yes: bool, t: &str| if yes { format!("stream `{}`", short(t)) } else { format!("`{}`", short(t)) };
                let c = comment(file, &[6, si as i32, 2, mi as i32]).replace('\n', " ").replace('|', "\\|");
                out.push_str(&format!(
                    "| `{}` | {} | {} | {c} |\n",
                    m.name(),
                    stream(m.client_streaming(), m.input_type()),
                    stream(m.server_streaming(), m.output_type())
                ));
            }
            out.push('\n');
        }
        for (i, m) in file.message_type.iter().enumerate() {
            message(&mut out, file, m, vec![4, i as i32], "");
        }
        for (i, e) in file.enum_type.iter().enumerate() {
            enumeration(&mut out, file, e, vec![5, i as i32], "");
        }
    }
    out
}

#[test]
fn api_reference_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/API.md");
    let want = generate();
    if std::env::var_os("BERTH_UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).unwrap();
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/API.md is not what the protos say; run `BERTH_UPDATE_DOCS=1 cargo test -p berth-proto --test api_docs`"
    );
}

#[test]
fn every_rpc_is_documented() {
    let set = FileDescriptorSet::decode(berth_proto::FILE_DESCRIPTOR_SET).unwrap();
    for file in set.file.iter().filter(|f| f.name().starts_with("berth/")) {
        for (si, s) in file.service.iter().enumerate() {
            for (mi, m) in s.method.iter().enumerate() {
                assert!(
                    !comment(file, &[6, si as i32, 2, mi as i32]).is_empty(),
                    "{}.{} has no comment in {}",
                    s.name(),
                    m.name(),
                    file.name()
                );
            }
        }
    }
}
