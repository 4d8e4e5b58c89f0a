//! `ImageService`: one-line handlers over [`BotManager`]'s images.

use std::sync::Arc;

use berth_proto::controlplane::v1 as pb;
use pb::image_service_server::ImageService;
use tonic::{Request, Response, Status};

use crate::bots::BotManager;
use crate::bots::Platform;
use crate::runtime::Image;
use crate::runtime::registry::Credentials;

pub struct Images<P: Platform> {
    m: Arc<BotManager<P>>,
}

impl<P: Platform> Images<P> {
    pub fn new(m: Arc<BotManager<P>>) -> Self {
        Images { m }
    }
}

fn image(i: Image) -> pb::Image {
    pb::Image { name: i.name, manifest_digest: i.manifest_digest }
}

#[tonic::async_trait]
impl<P: Platform> ImageService for Images<P> {
    async fn list_images(
        &self,
        _r: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        Ok(Response::new(pb::ListImagesResponse { images: self.m.image_list().into_iter().map(image).collect() }))
    }

    async fn pull_image(&self, r: Request<pb::PullImageRequest>) -> Result<Response<pb::PullImageResponse>, Status> {
        super::Scope::of(&r).admin("pull images")?;
        let r = r.into_inner();
        let creds = (!r.username.is_empty()).then_some(Credentials { username: r.username, password: r.password });
        let i = self.m.pull_image(&r.reference, creds).await?;
        Ok(Response::new(pb::PullImageResponse { image: Some(image(i)) }))
    }

    async fn import_image(
        &self,
        r: Request<pb::ImportImageRequest>,
    ) -> Result<Response<pb::ImportImageResponse>, Status> {
        super::Scope::of(&r).admin("import images")?;
        let i = self.m.import_image(std::path::Path::new(&r.get_ref().archive_path)).await?;
        Ok(Response::new(pb::ImportImageResponse { image: Some(image(i)) }))
    }
}
