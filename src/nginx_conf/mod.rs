//! Reading and writing nginx's configuration, pure: the upstream file fieldtrack owns
//! ([`upstream`]). Nothing here touches a file or runs nginx; the adapter
//! (`crate::apply::nginx`) and the commands do that and hand the text over.

pub mod upstream;
